"""Video-text annotation files -> an evaluation index (videos, texts and ground truth in both directions).

Formats: the UMT / VINDLU JSON list (``[{"video": "x.mp4", "caption": "..." | [...]}, ...]``), JSONL, CSV (read with
the ``csv`` module), parquet (read with pyarrow, in memory) and hub datasets (``hf://<name>[:split]``, through the
``datasets`` library); table rows sharing a video are grouped. Ids are assigned exactly as the official
``build_data`` does.

Video paths are resolved under the video root (:func:`video_path`): a path that leaves it (absolute, or climbing
out with ``..``) is refused with one line naming the annotation file and the entry, unless the DataModule opts in
(``allow_absolute_paths``). The check is on the path as written (symbolic links inside the root are followed as
usual: a root whose ``videos`` folder links elsewhere still works).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vidtldr_pl.text import clean_caption, join_paragraph
from vidtldr_pl.errors import AnnotationError

log = logging.getLogger(__name__)

Duplicates = Literal["keep", "drop"]
#: What the option names say when a path leaves the video root.
OUTSIDE_HINT = "to read paths outside it set allow_absolute_paths, --data.init_args.allow_absolute_paths=true"


@dataclass
class Entry:
    """One annotation: video path(s) and caption(s), as written in the file; ``where`` locates it ("file: entry i")."""

    video: str | list[str]
    caption: str | list[str]
    where: str = field(default="", compare=False)


def under_root(root: str | os.PathLike[str] | None, path: str | os.PathLike[str] | None) -> str | None:
    """``path`` resolved under ``root`` when it is relative (an absolute path, a ``hf://`` name or no root: as it
    is). How a DataModule with a ``data_root`` reads its file options (annotations, class names, label files). A
    relative path that already starts with ``root`` is kept as it is, so resolving twice (a DataModule rebuilt from
    its saved hyperparameters, a config written with working-directory paths) gives the same file."""
    if path is None:
        return None
    text = os.fspath(path)
    if root is None or os.fspath(root) == "" or text.startswith("hf://") or os.path.isabs(text):
        return text
    base = Path(root).parts
    if not os.path.isabs(os.fspath(root)) and Path(text).parts[: len(base)] == base:
        return text
    return str(Path(root) / text)


def video_path(root: str | os.PathLike[str], video: str, where: str, allow_outside: bool = False) -> str:
    """``<root>/<video>``, refusing (:class:`AnnotationError`, naming ``where``) a path that leaves ``root``: an
    absolute path or one whose ``..`` climb out of it, unless ``allow_outside`` (then an absolute path is read as
    it is). Checked on the text of the path, without touching the disk."""
    if not allow_outside:
        norm = os.path.normpath(video)
        if os.path.isabs(video) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            raise AnnotationError(f"{where}: video path {video!r} is outside the video root "
                                  f"{os.fspath(root) or '.'!r} ({OUTSIDE_HINT})")
    return str(Path(os.path.join(os.fspath(root), video)))


def drop_or_keep_duplicates(items: list, key, path: str, duplicates: Duplicates) -> list:
    """Exact duplicate rows (equal ``key(item)``): one log line with their count; ``"drop"`` keeps the first of
    each, ``"keep"`` keeps them all (each then counts, e.g. as one more query)."""
    if duplicates not in ("keep", "drop"):
        raise ValueError(f"duplicates must be 'keep' or 'drop', got {duplicates!r}")
    seen: set = set()
    unique = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            unique.append(item)
    count = len(items) - len(unique)
    if not count:
        return items
    if duplicates == "drop":
        log.warning("%s: %d exact duplicate row(s) dropped (duplicates: drop)", path, count)
        return unique
    log.warning("%s: %d exact duplicate row(s) kept, each counts again (duplicates: keep; set duplicates: drop to "
                "drop them)", path, count)
    return items


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
    return Entry(raw[video_key], raw[caption_key], f"{path}: entry {i}")


def _frozen(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def read_annotations(path: str | Path, video_key: str = "video", caption_key: str = "caption",
                     duplicates: Duplicates = "keep") -> list[Entry]:
    """Read a .json / .jsonl / .csv / .parquet file, or ``hf://<dataset>[:split]`` for a hub dataset.

    ``duplicates``: exact duplicate entries (same video and caption) are logged with their count and kept
    (default: an official file is read as it is, so its query count and metrics stay the published protocol's)
    or dropped."""
    spec = str(path)
    if spec.startswith("hf://"):
        return _group(_from_hub(spec), spec, video_key, caption_key, duplicates)
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
    elif suffix == ".csv":
        return _group(_from_csv(path), str(path), video_key, caption_key, duplicates)
    elif suffix == ".parquet":
        return _group(_from_parquet(path), str(path), video_key, caption_key, duplicates)
    else:
        raise AnnotationError(f"{path}: unsupported annotation format {suffix!r} (use .json, .jsonl, .csv, .parquet or hf://name)")
    if not raw:
        raise AnnotationError(f"{path}: no entries")
    entries = [_check_entry(r, i, str(path), video_key, caption_key) for i, r in enumerate(raw)]
    return drop_or_keep_duplicates(entries, lambda e: (_frozen(e.video), _frozen(e.caption)), str(path), duplicates)


def _from_csv(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV with a header, in memory (an empty cell reads as None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    reader = csv.DictReader(text.splitlines())
    columns = list(reader.fieldnames or [])
    if not columns:
        raise AnnotationError(f"{path}: empty file (expected a header such as 'video,caption' and one row per caption)")
    try:
        rows = [{k: (v if v != "" else None) for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as err:
        raise AnnotationError(f"{path}:{reader.line_num}: not valid CSV ({err})") from err
    return columns, rows


def _from_parquet(path: Path) -> tuple[list[str], list[dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a damaged file
        raise AnnotationError(f"{path}: not a readable parquet file ({err})") from err
    return list(table.column_names), table.to_pylist()


def _from_hub(spec: str) -> tuple[list[str], list[dict]]:
    import datasets

    name, _, split = spec[len("hf://"):].partition(":")
    table = datasets.load_dataset(name, split=split or "test")
    return list(table.column_names), list(table)


def _group(table: tuple[list[str], list[dict]], spec: str, video_key: str, caption_key: str,
           duplicates: Duplicates) -> list[Entry]:
    """Table rows -> entries; rows with the same video are grouped in first-seen order."""
    columns, rows = table
    missing = [k for k in (video_key, caption_key) if k not in columns]
    if missing:
        raise AnnotationError(f"{spec}: missing column(s) {missing} (columns: {columns})")
    if not rows:
        raise AnnotationError(f"{spec}: no entries (a header but no rows)")
    checked = [_check_entry({video_key: row[video_key], caption_key: row[caption_key]}, i, spec, video_key, caption_key)
               for i, row in enumerate(rows)]
    checked = drop_or_keep_duplicates(checked, lambda e: (_frozen(e.video), _frozen(e.caption)), spec, duplicates)
    grouped: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for entry in checked:
        captions = entry.caption if isinstance(entry.caption, list) else [entry.caption]
        grouped.setdefault(str(entry.video), []).extend(captions)
        where.setdefault(str(entry.video), entry.where)
    return [Entry(v, c if len(c) > 1 else c[0], where[v]) for v, c in grouped.items()]


@dataclass
class RetrievalIndex:
    """videos: paths; texts: cleaned captions; txt2vid[t]: video id (list with several video GTs);
    vid2txt[v]: list of text ids (one id with several video GTs)."""

    videos: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    txt2vid: list[int | list[int]] = field(default_factory=list)
    vid2txt: list[list[int] | int] = field(default_factory=list)


def build_index(entries: list[Entry], video_root: str | Path, paragraph: bool = False,
                has_multi_vision_gt: bool = False, max_words: int | None = None,
                allow_absolute_paths: bool = False) -> RetrievalIndex:
    """Official id assignment: one video per entry and all its captions (multi text GT); or, for SSv2-style
    files, one text per entry and all its videos (multi vision GT). Paragraph datasets join captions first.
    Video paths must stay under ``video_root`` unless ``allow_absolute_paths`` (see :func:`video_path`)."""
    index = RetrievalIndex()
    for i, entry in enumerate(entries):
        where = entry.where or f"entry {i}"
        caption = join_paragraph(entry.caption) if paragraph and isinstance(entry.caption, list) else entry.caption
        if has_multi_vision_gt:
            text_id = len(index.texts)
            index.texts.append(clean_caption(caption if isinstance(caption, str) else caption[0], max_words))
            videos = entry.video if isinstance(entry.video, list) else [entry.video]
            index.txt2vid.append(list(range(len(index.videos), len(index.videos) + len(videos))))
            for v in videos:
                index.videos.append(video_path(video_root, v, where, allow_absolute_paths))
                index.vid2txt.append(text_id)
        else:
            video = entry.video if isinstance(entry.video, str) else entry.video[0]
            video_id = len(index.videos)
            index.videos.append(video_path(video_root, video, where, allow_absolute_paths))
            captions = caption if isinstance(caption, list) else [caption]
            index.vid2txt.append(list(range(len(index.texts), len(index.texts) + len(captions))))
            for c in captions:
                index.texts.append(clean_caption(c, max_words))
                index.txt2vid.append(video_id)
    return index
