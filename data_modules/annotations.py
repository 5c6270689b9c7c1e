"""Video-text annotation files -> an evaluation index (videos, texts and ground truth in both directions).

Formats: the UMT / VINDLU JSON list (``[{"video": "x.mp4", "caption": "..." | [...]}, ...]``), JSONL, and CSV /
parquet files or hub datasets read through the ``datasets`` library (rows sharing a video are grouped).
Ids are assigned exactly as the official ``build_data`` does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vidtldr_pl.text import clean_caption, join_paragraph


class AnnotationError(ValueError):
    """A malformed annotation file (names the file, the entry and the key)."""


@dataclass
class Entry:
    """One annotation: video path(s) and caption(s), as written in the file."""

    video: str | list[str]
    caption: str | list[str]


def _check_entry(raw: object, i: int, path: str, video_key: str, caption_key: str) -> Entry:
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: entry {i} is a {type(raw).__name__}, expected an object with {video_key!r} and {caption_key!r}")
    for key in (video_key, caption_key):
        if key not in raw:
            raise AnnotationError(f"{path}: entry {i} has no {key!r} key (keys: {sorted(raw)})")
        value = raw[key]
        ok = isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        if not ok:
            raise AnnotationError(f"{path}: entry {i} key {key!r} must be a string or a non-empty list of strings, got {value!r:.80}")
    return Entry(raw[video_key], raw[caption_key])


def read_annotations(path: str | Path, video_key: str = "video", caption_key: str = "caption") -> list[Entry]:
    """Read a .json / .jsonl / .csv / .parquet file, or ``hf://<dataset>[:split]`` for a hub dataset."""
    spec = str(path)
    if spec.startswith("hf://"):
        return _from_datasets(spec, video_key, caption_key)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(raw, list):
            raise AnnotationError(f"{path}: expected a JSON list of entries, got {type(raw).__name__}")
    elif suffix == ".jsonl":
        raw = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise AnnotationError(f"{path}: line {n} is not valid JSON ({err})") from err
    elif suffix in (".csv", ".parquet"):
        return _from_datasets(str(path), video_key, caption_key)
    else:
        raise AnnotationError(f"{path}: unsupported annotation format {suffix!r} (use .json, .jsonl, .csv, .parquet or hf://name)")
    if not raw:
        raise AnnotationError(f"{path}: no entries")
    return [_check_entry(r, i, str(path), video_key, caption_key) for i, r in enumerate(raw)]


def _from_datasets(spec: str, video_key: str, caption_key: str) -> list[Entry]:
    """Tables through the datasets library; rows with the same video are grouped in first-seen order."""
    import datasets

    if spec.startswith("hf://"):
        name, _, split = spec[len("hf://"):].partition(":")
        table = datasets.load_dataset(name, split=split or "test")
    else:
        kind = "csv" if spec.lower().endswith(".csv") else "parquet"
        table = datasets.load_dataset(kind, data_files=spec, split="train")
    missing = [k for k in (video_key, caption_key) if k not in table.column_names]
    if missing:
        raise AnnotationError(f"{spec}: missing column(s) {missing} (columns: {table.column_names})")
    grouped: dict[str, list[str]] = {}
    for i, row in enumerate(table):
        entry = _check_entry({video_key: row[video_key], caption_key: row[caption_key]}, i, spec, video_key, caption_key)
        captions = entry.caption if isinstance(entry.caption, list) else [entry.caption]
        grouped.setdefault(str(entry.video), []).extend(captions)
    return [Entry(v, c if len(c) > 1 else c[0]) for v, c in grouped.items()]


@dataclass
class RetrievalIndex:
    """videos: paths; texts: cleaned captions; txt2vid[t]: video id (list with several video GTs);
    vid2txt[v]: list of text ids (one id with several video GTs)."""

    videos: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    txt2vid: list[int | list[int]] = field(default_factory=list)
    vid2txt: list[list[int] | int] = field(default_factory=list)


def build_index(entries: list[Entry], video_root: str | Path, paragraph: bool = False,
                has_multi_vision_gt: bool = False, max_words: int | None = None) -> RetrievalIndex:
    """Official id assignment: one video per entry and all its captions (multi text GT); or, for SSv2-style
    files, one text per entry and all its videos (multi vision GT). Paragraph datasets join captions first."""
    root = Path(video_root)
    index = RetrievalIndex()
    for entry in entries:
        caption = join_paragraph(entry.caption) if paragraph and isinstance(entry.caption, list) else entry.caption
        if has_multi_vision_gt:
            text_id = len(index.texts)
            index.texts.append(clean_caption(caption if isinstance(caption, str) else caption[0], max_words))
            videos = entry.video if isinstance(entry.video, list) else [entry.video]
            index.txt2vid.append(list(range(len(index.videos), len(index.videos) + len(videos))))
            for v in videos:
                index.videos.append(str(root / v))
                index.vid2txt.append(text_id)
        else:
            video = entry.video if isinstance(entry.video, str) else entry.video[0]
            video_id = len(index.videos)
            index.videos.append(str(root / video))
            captions = caption if isinstance(caption, list) else [caption]
            index.vid2txt.append(list(range(len(index.texts), len(index.texts) + len(captions))))
            for c in captions:
                index.texts.append(clean_caption(c, max_words))
                index.txt2vid.append(video_id)
    return index
