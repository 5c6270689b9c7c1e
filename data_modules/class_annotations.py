"""Labelled-video annotation files -> video paths, 0-based labels and class names.

Formats (a bad line or entry raises one AnnotationError line naming the file and the line / entry):

- ``<path> <label>`` lists: VideoMAE's Kinetics ``train.csv`` / ``val.csv`` / ``test.csv`` (space-separated, no
  header; the label is the last field, so a path may hold spaces);
- tables with a header: CSV (``video,label``; an integer label is a class index, anything else a class name), a
  JSON list of ``{"video": ..., "label": ...}`` objects, JSONL (the same, one per line);
- a folder per class: ``<root>/<class>/<video>`` (classes sorted by name);
- class-name files: one name per line, ``id,name`` CSV (ViFi-CLIP), ``<id> <name>`` (UCF101's 1-based classInd.txt),
  a JSON list of names or a ``{name: id}`` object;
- the official SSv2, UCF101 and HMDB51 split files (:func:`read_ssv2`, :func:`read_ucf101`, :func:`read_hmdb51`).

Video paths are taken under the video root and must stay there (``allow_absolute_paths`` opts out; see
:func:`vidtldr_pl.data_modules.annotations.video_path`). Exact duplicate rows of a list or table are logged with
their count and kept or dropped (``duplicates``).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import AnnotationError, Duplicates, drop_or_keep_duplicates, video_path

__all__ = [
    "VIDEO_EXTENSIONS", "LabelledVideos", "read_class_folders", "read_class_names", "read_hmdb51", "read_space_list",
    "read_ssv2", "read_ssv2_labels", "read_table", "read_ucf101", "resolve_labels",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".gif")


@dataclass
class LabelledVideos:
    """One split: ``videos[i]`` (a path) has class ``labels[i]`` (0-based)."""

    videos: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos)


def _text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err


def _lines(path: Path) -> list[str]:
    return _text(path).splitlines()


def _json(path: Path) -> object:
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def _join(root: str | Path, video: str, where: str = "", allow_outside: bool = False) -> str:
    return video_path(root, video, where or "annotation", allow_outside)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _check_label(label: int, num_classes: int | None, where: str) -> int:
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise AnnotationError(f"{where}: label {label} outside {bound}")
    return label


def read_space_list(path: str | Path, root: str | Path = "", num_classes: int | None = None, *,
                    allow_absolute_paths: bool = False, duplicates: Duplicates = "keep") -> LabelledVideos:
    """``<path> <integer label>`` per line, no header (Kinetics lists as VideoMAE / pytorchvideo write them)."""
    path = Path(path)
    out = LabelledVideos()
    lines = [(n, raw) for n, raw in enumerate(_lines(path), 1) if raw.strip()]
    lines = drop_or_keep_duplicates(lines, lambda item: item[1].strip(), str(path), duplicates)
    for n, raw in lines:
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        label = _int(parts[-1]) if len(parts) == 2 else None
        if label is None:
            raise AnnotationError(f"{path}:{n}: expected '<video path> <integer label>' (space-separated), got {line!r:.80}")
        out.videos.append(_join(root, parts[0], f"{path}:{n}", allow_absolute_paths))
        out.labels.append(_check_label(label, num_classes, f"{path}:{n}"))
    if not out.videos:
        raise AnnotationError(f"{path}: no entries")
    return out


@dataclass
class RawEntry:
    """A table row before its label is resolved: label an int (class index) or a str (class name)."""

    video: str
    label: int | str
    where: str  # "file:line" or "file: entry i"


def _raw(value: object, where: str, key: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise AnnotationError(f"{where}: {key!r} must be a class index or a class name, got {value!r:.60}")
    return value.strip() if isinstance(value, str) else value


def read_table(path: str | Path, video_key: str = "video", label_key: str = "label",
               duplicates: Duplicates = "keep") -> list[RawEntry]:
    """A CSV with a header, a JSON list of objects or a JSONL file -> raw entries (labels not yet resolved)."""
    path = Path(path)
    suffix = path.suffix.lower()
    entries: list[RawEntry] = []
    if suffix == ".csv":
        lines = _lines(path)
        reader = csv.DictReader(lines)
        if not reader.fieldnames:
            raise AnnotationError(f"{path}: empty file (expected a header such as '{video_key},{label_key}' and one "
                                  "row per video)")
        missing = [k for k in (video_key, label_key) if k not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(f"{path}:1: header has no column {missing[0]!r} (columns: {reader.fieldnames})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            video, label = row.get(video_key), row.get(label_key)
            if not video or label is None:
                raise AnnotationError(f"{where}: needs both {video_key!r} and {label_key!r}, got {row}")
            number = _int(label.strip())
            entries.append(RawEntry(video.strip(), number if number is not None else _raw(label, where, label_key), where))
    elif suffix in (".json", ".jsonl"):
        if suffix == ".json":
            items = _json(path)
            if not isinstance(items, list):
                raise AnnotationError(f"{path}: expected a JSON list of {{{video_key!r}, {label_key!r}}} objects, "
                                      f"got a {type(items).__name__}")
            located = [(f"{path}: entry {i}", item) for i, item in enumerate(items)]
        else:
            located = []
            for n, line in enumerate(_lines(path), 1):
                if line.strip():
                    try:
                        located.append((f"{path}:{n}", json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise AnnotationError(f"{path}:{n}: not valid JSON ({err.msg})") from err
        for where, item in located:
            if not isinstance(item, dict) or video_key not in item or label_key not in item:
                raise AnnotationError(f"{where}: expected an object with {video_key!r} and {label_key!r}, got {item!r:.80}")
            if not isinstance(item[video_key], str) or not item[video_key]:
                raise AnnotationError(f"{where}: {video_key!r} must be a non-empty string, got {item[video_key]!r:.60}")
            entries.append(RawEntry(item[video_key], _raw(item[label_key], where, label_key), where))
    else:
        raise AnnotationError(f"{path}: unsupported table format {suffix!r} (use .csv with a header, .json or .jsonl)")
    if not entries:
        raise AnnotationError(f"{path}: no entries" + (" (a header but no rows)" if suffix == ".csv" else ""))
    return drop_or_keep_duplicates(entries, lambda e: (e.video, e.label), str(path), duplicates)


def resolve_labels(entries: list[RawEntry], root: str | Path, class_names: list[str] | None,
                   num_classes: int | None, *, allow_absolute_paths: bool = False) -> LabelledVideos:
    """Raw entries -> 0-based labels: names through ``class_names`` (required when any label is a name), indices
    checked against ``num_classes`` (or the number of class names)."""
    lookup = {name: i for i, name in enumerate(class_names)} if class_names else None
    bound = len(class_names) if class_names else num_classes
    out = LabelledVideos()
    for entry in entries:
        if isinstance(entry.label, str):
            if lookup is None:
                raise AnnotationError(f"{entry.where}: class name {entry.label!r} but no class names are known")
            if entry.label not in lookup:
                raise AnnotationError(f"{entry.where}: unknown class {entry.label!r} (not among the {len(lookup)} class names)")
            label = lookup[entry.label]
        else:
            label = _check_label(entry.label, bound, entry.where)
        out.videos.append(_join(root, entry.video, entry.where, allow_absolute_paths))
        out.labels.append(label)
    return out


def read_class_folders(root: str | Path, class_names: list[str] | None = None) -> tuple[LabelledVideos, list[str]]:
    """``<root>/<class>/<video>`` (any depth below the class folder) -> the videos and the sorted class names (or
    ``class_names``, when given: a folder not among them is an error)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    names = list(class_names) if class_names else [p.name for p in folders]
    lookup = {name: i for i, name in enumerate(names)}
    out = LabelledVideos()
    for folder in folders:
        if folder.name not in lookup:
            raise AnnotationError(f"{folder}: class folder {folder.name!r} is not among the {len(names)} class names")
        for video in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()):
            out.videos.append(str(video))
            out.labels.append(lookup[folder.name])
    if not out.videos:
        raise AnnotationError(f"{root}: no class folders with videos (expected <root>/<class>/<video>"
                              f"{VIDEO_EXTENSIONS[0]})")
    return out, names


def read_class_names(path: str | Path) -> list[str]:
    """Class names in label order from a names file (see the module docstring for the accepted layouts)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = _json(path)
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return list(data)
        if isinstance(data, dict):
            return _ordered(((_int(str(v)), k) for k, v in data.items()), path)
        raise AnnotationError(f"{path}: expected a JSON list of class names or a {{name: id}} object")
    pairs: list[tuple[int | None, str]] = []
    for n, raw in enumerate(_lines(path), 1):
        line = raw.strip()
        if not line:
            continue
        if "," in line:
            first, name = (s.strip() for s in line.split(",", 1))
            if _int(first) is None and n == 1:  # a header such as "id,name"
                continue
        else:
            head = line.split(None, 1)
            first, name = (head[0], head[1].strip()) if len(head) == 2 and _int(head[0]) is not None else ("", line)
        if first and _int(first) is None:
            raise AnnotationError(f"{path}:{n}: expected '<id>,<name>', '<id> <name>' or a name, got {line!r:.80}")
        pairs.append((_int(first) if first else None, name))
    if not pairs:
        raise AnnotationError(f"{path}: no class names")
    if all(i is None for i, _ in pairs):
        return [name for _, name in pairs]
    return _ordered(pairs, path)


def _ordered(pairs, path: Path) -> list[str]:
    """(id, name) pairs with ids 0..N-1 or 1..N (UCF101's classInd) -> names by id."""
    pairs = list(pairs)
    if any(i is None for i, _ in pairs):
        raise AnnotationError(f"{path}: every class needs an integer id, or none does")
    ids = sorted(i for i, _ in pairs)
    start = ids[0]
    if start not in (0, 1) or ids != list(range(start, start + len(ids))):
        raise AnnotationError(f"{path}: class ids must be 0..N-1 or 1..N without gaps or repeats, got {ids[:10]}...")
    return [name for _, name in sorted(pairs)]


# ---------------------------------------------------------------------------------------------- official benchmarks
def read_ssv2_labels(path: str | Path) -> list[str]:
    """``something-something-v2-labels.json`` ({template without brackets: "id"}) -> class names by id (174)."""
    path = Path(path)
    data = _json(path)
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected the SSv2 label object {{template: id}}")
    return _ordered(((_int(str(v)), k) for k, v in data.items()), path)


def read_ssv2(split: str | Path, class_names: list[str], root: str | Path, ext: str = ".webm", *,
              allow_absolute_paths: bool = False) -> LabelledVideos:
    """An official SSv2 split JSON (records with ``id`` and ``template``) -> videos ``<root>/<id><ext>`` and labels
    ``labels[template with "[" and "]" removed]``."""
    split = Path(split)
    records = _json(split)
    if not isinstance(records, list) or not records:
        raise AnnotationError(f"{split}: expected the SSv2 list of records with 'id' and 'template'")
    lookup = {name: i for i, name in enumerate(class_names)}
    out = LabelledVideos()
    for i, record in enumerate(records):
        where = f"{split}: entry {i}"
        if not isinstance(record, dict) or "id" not in record:
            raise AnnotationError(f"{where}: expected an object with 'id' and 'template', got {record!r:.80}")
        if "template" not in record:
            raise AnnotationError(f"{where} (id {record['id']}) has no 'template' (the official test split has no "
                                  "labels: evaluate on the validation split)")
        template = str(record["template"]).replace("[", "").replace("]", "")
        if template not in lookup:
            raise AnnotationError(f"{where} (id {record['id']}): template {template!r} is not in the label file")
        out.videos.append(_join(root, f"{record['id']}{ext}", where, allow_absolute_paths))
        out.labels.append(lookup[template])
    return out


def read_ucf101(split_dir: str | Path, root: str | Path, split: int, train: bool, *,
                allow_absolute_paths: bool = False) -> tuple[LabelledVideos, list[str]]:
    """UCF101's ``ucfTrainTestlist``: classInd.txt (1-based), ``trainlist0{split}.txt`` (``Class/v_x.avi <1-based
    label>``) or ``testlist0{split}.txt`` (``Class/v_x.avi``; the label is the folder's class)."""
    split_dir = Path(split_dir)
    names = read_class_names(split_dir / "classInd.txt")
    lookup = {name: i for i, name in enumerate(names)}
    path = split_dir / f"{'trainlist' if train else 'testlist'}0{split}.txt"
    out = LabelledVideos()
    for n, raw in enumerate(_lines(path), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        folder = parts[0].replace("\\", "/").split("/")[0] if "/" in parts[0].replace("\\", "/") else None
        if train:
            label = _int(parts[1]) if len(parts) == 2 else None
            if label is None:
                raise AnnotationError(f"{path}:{n}: expected '<Class>/<video> <1-based label>', got {line!r:.80}")
            label = _check_label(label - 1, len(names), f"{path}:{n}")
            if folder is not None and folder in lookup and lookup[folder] != label:
                raise AnnotationError(f"{path}:{n}: label {label + 1} is {names[label]!r} but the video is in {folder!r}")
        else:
            if len(parts) != 1 or folder is None:
                raise AnnotationError(f"{path}:{n}: expected '<Class>/<video>', got {line!r:.80}")
            if folder not in lookup:
                raise AnnotationError(f"{path}:{n}: class folder {folder!r} is not in classInd.txt")
            label = lookup[folder]
        out.videos.append(_join(root, parts[0], f"{path}:{n}", allow_absolute_paths))
        out.labels.append(label)
    if not out.videos:
        raise AnnotationError(f"{path}: no entries")
    return out, names


HMDB51_FLAGS = {"1": "train", "2": "test", "0": "unused"}


def read_hmdb51(split_dir: str | Path, root: str | Path, split: int, train: bool, *,
                allow_absolute_paths: bool = False) -> tuple[LabelledVideos, list[str]]:
    """HMDB51's ``testTrainMulti_7030_splits``: ``<class>_test_split{split}.txt`` with ``<video> <flag>`` lines (1 train,
    2 test, 0 unused) -> videos ``<root>/<class>/<video>``; classes sorted by name."""
    split_dir = Path(split_dir)
    suffix = f"_test_split{split}.txt"
    files = sorted(split_dir.glob(f"*{suffix}")) if split_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no HMDB51 split files *{suffix} in {split_dir}")
    names = [f.name[: -len(suffix)] for f in files]
    wanted = "1" if train else "2"
    out = LabelledVideos()
    for label, (name, path) in enumerate(zip(names, files)):
        for n, raw in enumerate(_lines(path), 1):
            line = raw.strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in HMDB51_FLAGS:
                raise AnnotationError(f"{path}:{n}: expected '<video> <flag>' with flag 1 (train), 2 (test) or 0 "
                                      f"(unused), got {line!r:.80}")
            if parts[1] == wanted:
                out.videos.append(_join(root, f"{name}/{parts[0]}", f"{path}:{n}", allow_absolute_paths))
                out.labels.append(label)
    if not out.videos:
        raise AnnotationError(f"{split_dir}: no {'train' if train else 'test'} videos in split {split}")
    return out, names
