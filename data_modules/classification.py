"""LightningDataModules for action recognition: a generic labelled-video module and the benchmark presets
(Kinetics-400/600/700, SSv2, UCF101, HMDB51), with VideoMAE's test views (vidtldr_pl.data_modules.views).

Batches: ``{"video": (B, T, 3, H, W) float (ImageNet-normalised), "label": (B,) long, "video_index": (B,) long,
"view_index": (B,) long}``. Evaluation items are (video, view) pairs, video-major (view 0 for single-view
validation); the decoded frames of the last video are kept, so the views of one video decode it once per worker.
The module exposes ``num_classes``, ``class_names``, ``num_views(stage)``, ``num_videos(stage)`` and
``skip_errors``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .annotations import AnnotationError, Duplicates, under_root
from .base import VideoDataModule, init_args, listed, stage_key
from .class_annotations import (
    LabelledVideos,
    read_class_folders,
    read_class_names,
    read_hmdb51,
    read_space_list,
    read_ssv2,
    read_ssv2_labels,
    read_table,
    read_ucf101,
    resolve_labels,
)
from .clips import Transform, sample_key, train_clip
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from .video import OnCorrupt, VideoDecoder
from .views import ClipProtocol, DenseClips, FrameRule, SegmentClips, resize_short_side, spatial_crop


class LabelledVideoDataset(Dataset):
    """The clips of one split.

    Evaluation (``mode`` "test" / "val"): item ``i`` is view ``i % num_views`` of video ``i // num_views``: the
    protocol's frames, short side resized to ``img_size``, temporal view ``view // num_crops``, crop
    ``view % num_crops``, normalised. Training (``mode`` "train"): item ``(i, seed)`` is one random clip of video
    ``i`` (frames from ``seed``), through ``train_transform`` (random resized crop, flip) with a generator seeded by
    ``seed``. ``decoder``: the protocol's frames of ``mode`` (evaluation: short side resized as they are decoded).
    An unreadable video with ``skip_errors`` gives None (dropped by the collate function).
    """

    def __init__(self, split: LabelledVideos, protocol: ClipProtocol, mode: str, img_size: int, decoder: VideoDecoder,
                 num_clips: int = 1, num_crops: int = 1, train_transform: Transform | None = None) -> None:
        self.split, self.protocol, self.mode, self.img_size, self.decoder = split, protocol, mode, img_size, decoder
        self.num_clips, self.num_crops = (num_clips, num_crops) if mode == "test" else (1, 1)
        self.train_transform = train_transform
        self._cached: tuple[int, torch.Tensor | None] | None = None

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.split) * (self.num_views if self.mode != "train" else 1)

    def frames(self, video: int) -> torch.Tensor | None:
        """The protocol's frames of ``video``, short side resized: uint8 (F, 3, h, w) (None when skipped)."""
        if self._cached is None or self._cached[0] != video:
            clip = self.decoder(self.split.videos[video])
            self._cached = (video, None if clip is None else resize_short_side(clip.frames, self.img_size))
        return self._cached[1]

    def view(self, video: int, view: int) -> torch.Tensor | None:
        """View ``view`` of ``video``: float (T, 3, img_size, img_size), normalised (None when skipped)."""
        frames = self.frames(video)
        if frames is None:
            return None
        clip, crop = divmod(view, self.num_crops)
        if self.mode == "test":
            frames = frames[self.protocol.clip(frames.shape[0], clip, self.num_clips)]
        return normalize_uint8(spatial_crop(frames, self.img_size, crop, self.num_crops), IMAGENET_MEAN, IMAGENET_STD)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        if self.mode == "train":
            i, seed = sample_key(key)
            video, view = train_clip(self.decoder, self.train_transform, self.split.videos[i], seed), 0
        else:
            i, view = divmod(int(key), self.num_views)
            video = self.view(i, view)
        if video is None:
            return None
        return {"video": video, "label": self.split.labels[i], "video_index": i, "view_index": view}


class VideoClassificationDataModule(VideoDataModule):
    """Any labelled-video set, with VideoMAE's evaluation views.

    Args:
        test / val / train: each split's annotation: a ``<path> <label>`` list (.txt / .lst, or a .csv without
            commas), a CSV with a header, a JSON / JSONL list of objects, or a folder per class
            (``<dir>/<class>/<video>``); see vidtldr_pl.data_modules.class_annotations. ``val`` falls back to ``test``.
        video_root: the folder annotation paths are relative to (class folders hold their own paths).
        class_names: a class-names file or a list; required when labels are class names unless the sorted names
            found in the annotations are wanted (which is what folders give).
        data_root: when set, relative test / val / train / video_root / class_names paths are taken under it (an
            absolute path as it is) and an empty video_root is data_root itself.
        num_classes: with integer labels and no names (default: the largest label + 1 over the splits).
        list_format: "auto" (by suffix / content), "list", "table" or "folder".
        video_key / label_key: the columns (or keys) of a table.
        protocol: "dense" (Kinetics, UCF101, HMDB51: ``num_frames`` frames ``sampling_rate`` apart) or "segment"
            (SSv2: one frame in each of ``num_frames`` segments).
        test_clips / test_crops: evaluation views of the test split (VideoMAE: K400 5 x 3, SSv2 2 x 3).
        val_views: "single" (one view: the middle clip, centre crop; VideoMAE's "validation" mode, not for reported
            numbers) or "test" (the test views on the validation split).
        img_size: the short side and the crop size (VideoMAE: 224).
        batch_size / eval_batch_size (views per batch) / num_workers / decode_threads (FFmpeg threads per decode).
        skip_errors: log and drop unreadable videos; the task then scores the videos that remain.
        on_corrupt: a damaged video: "error" (default, one line naming the file) or "keep_decoded" (sample from the
            frames that did decode; a warning names the file).
        allow_absolute_paths: read annotation paths outside video_root (absolute, or climbing out with ".."); by
            default such a path is refused, naming the annotation file and the line / entry.
        duplicates: exact duplicate rows of a list or table are logged with their count and kept ("keep", the
            default: the files are read as they are) or dropped ("drop").
        allow_images: read a still image (PNG, JPEG, ...) listed as a video as a one-frame video (refused by default).
        seed: training order and per-clip randomness (frames, crop, flip) derive from (seed, epoch, index).
        train_crop_scale / train_flip_p: RandomResizedCrop area range and flip probability of training clips
            (VideoMAE: (0.08, 1) and 0.5, no flip for SSv2). RandAugment and random erasing are not applied.
    """

    title = "dataset"
    annotation_options = ("train", "val", "test")

    def __init__(
        self,
        test: str | None = None,
        val: str | None = None,
        train: str | None = None,
        video_root: str = "",
        class_names: str | list[str] | None = None,
        num_classes: int | None = None,
        list_format: str = "auto",
        video_key: str = "video",
        label_key: str = "label",
        protocol: str = "dense",
        num_frames: int = 16,
        sampling_rate: int = 4,
        test_clips: int = 5,
        test_crops: int = 3,
        val_views: str = "single",
        img_size: int = 224,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 4,
        decode_threads: int = 0,
        skip_errors: bool = False,
        seed: int = 0,
        train_crop_scale: tuple[float, float] = (0.08, 1.0),
        train_flip_p: float = 0.5,
        data_root: str | None = None,
        on_corrupt: OnCorrupt = "error",
        allow_absolute_paths: bool = False,
        duplicates: Duplicates = "keep",
        allow_images: bool = False,
    ) -> None:
        super().__init__()
        if data_root is not None:  # the files of a dataset folder: relative paths are taken under it
            test, val, train = (under_root(data_root, p) for p in (test, val, train))
            video_root = under_root(data_root, video_root) if video_root else str(data_root)
            if isinstance(class_names, str):
                class_names = under_root(data_root, class_names)
        self.save_hyperparameters(init_args(locals()))
        if protocol not in ("dense", "segment"):
            raise ValueError(f"protocol must be 'dense' or 'segment', got {protocol!r}")
        if val_views not in ("single", "test"):
            raise ValueError(f"val_views must be 'single' or 'test', got {val_views!r}")
        if list_format not in ("auto", "list", "table", "folder"):
            raise ValueError(f"list_format must be 'auto', 'list', 'table' or 'folder', got {list_format!r}")
        self.protocol: ClipProtocol = (DenseClips(num_frames, sampling_rate) if protocol == "dense"
                                       else SegmentClips(num_frames))
        if protocol == "segment" and test_clips > 2:
            raise ValueError(f"the segment protocol has 2 temporal views (starts, midpoints), test_clips={test_clips}")
        self._splits: dict[str, LabelledVideos] = {}
        self._names: list[str] | None = None
        self._tables: dict[str, list] = {}

    # ------------------------------------------------------------------ annotations (presets override these two)
    def read_split(self, stage: str) -> LabelledVideos:
        """Read the annotation of a stage into paths and 0-based labels."""
        spec = self.annotation_file(stage)
        names = self.class_names_or_none()
        kind = self._format(spec)
        if kind == "folder":
            return read_class_folders(spec, names)[0]
        h = self.hparams
        if kind == "list":
            return read_space_list(spec, h.video_root, self._bound(names), allow_absolute_paths=h.allow_absolute_paths,
                                   duplicates=h.duplicates)
        return resolve_labels(self._table(spec), h.video_root, names, self._bound(names),
                              allow_absolute_paths=h.allow_absolute_paths)

    def read_class_names(self) -> list[str] | None:
        """Class names in label order, or None when labels are plain indices without names."""
        given = self.hparams.class_names
        if isinstance(given, (list, tuple)):
            return [str(n) for n in given]
        if isinstance(given, str):
            return read_class_names(given)
        found: set[str] = set()
        named = False
        for spec in dict.fromkeys(s for s in (self.annotation(st) for st in ("fit", "validate", "test")) if s):
            kind = self._format(spec)
            if kind == "folder":
                named = True
                found |= {p.name for p in Path(spec).iterdir() if p.is_dir()}
            elif kind == "table":
                labels = [e.label for e in self._table(spec) if isinstance(e.label, str)]
                named |= bool(labels)
                found |= set(labels)
        return sorted(found) if named else None

    # ------------------------------------------------------------------ helpers
    def _format(self, spec: str) -> str:
        if self.hparams.list_format != "auto":
            return self.hparams.list_format
        path = Path(spec)
        if path.is_dir():
            return "folder"
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            return "table"
        if suffix == ".csv" and path.is_file():
            with path.open(encoding="utf-8", errors="replace") as f:
                first = next((line for line in f if line.strip()), "")
            return "table" if "," in first else "list"
        return "list"

    def _table(self, spec: str) -> list:
        if spec not in self._tables:
            self._tables[spec] = read_table(spec, self.hparams.video_key, self.hparams.label_key,
                                            duplicates=self.hparams.duplicates)
        return self._tables[spec]

    def _bound(self, names: list[str] | None) -> int | None:
        return len(names) if names else self.hparams.num_classes

    def class_names_or_none(self) -> list[str] | None:
        if self._names is None:
            self._names = self.read_class_names() or []
        return self._names or None

    def split(self, stage: str) -> LabelledVideos:
        """The (cached) split of a stage."""
        key = stage_key(stage)
        if key not in self._splits:
            self._splits[key] = self.read_split(key)
        return self._splits[key]

    # ------------------------------------------------------------------ the classification data contract
    @property
    def num_classes(self) -> int:
        names = self.class_names_or_none()
        if names:
            return len(names)
        if self.hparams.num_classes is not None:
            return int(self.hparams.num_classes)
        stages = [s for s in ("fit", "validate", "test") if self.annotation(s)]
        return 1 + max(max(self.split(s).labels) for s in stages)

    @property
    def class_names(self) -> list[str]:
        return self.class_names_or_none() or [str(i) for i in range(self.num_classes)]

    def num_views(self, stage: str) -> int:
        """Views per video in the evaluation of ``stage`` ("validate" / "test"); 1 for training."""
        key = stage_key(stage)
        if key == "test" or (key == "validate" and self.hparams.val_views == "test"):
            return self.hparams.test_clips * self.hparams.test_crops
        return 1

    def num_videos(self, stage: str) -> int:
        return len(self.split(stage))

    def videos(self, stage: str) -> list[str]:
        return self.split(stage).videos

    # ------------------------------------------------------------------ set-up
    def describe_source(self) -> str:
        return "point test / val / train at your annotation files and video_root at the videos"

    def check_paths(self, stages: tuple[str, ...] = ("test",)) -> None:
        """Fail early with one line when an annotation or the video folder is missing."""
        for stage in stages:
            spec = self.annotation(stage)
            if spec is None:
                if stage == "fit":
                    raise FileNotFoundError(f"{self.title}: no training annotation configured (set train; "
                                            f"{self.describe_source()})")
                continue
            if not Path(spec).exists():
                raise FileNotFoundError(f"{self.title} {stage_key(stage)} annotation not found: {spec} ({self.describe_source()})")
            if self._format(spec) != "folder" and self.hparams.video_root and not Path(self.hparams.video_root).is_dir():
                raise FileNotFoundError(f"{self.title} video folder not found: {self.hparams.video_root} "
                                        f"({self.describe_source()})")

    def missing_videos(self, stage: str, missing: list[str], total: int) -> tuple[str, str]:
        return (f"{len(missing)} of {total} {self.title} {stage_key(stage)} videos not found: {listed(missing, 3)}",
                self.describe_source())

    # ------------------------------------------------------------------ datasets
    def dataset(self, stage: str) -> LabelledVideoDataset:
        """The dataset of a stage: "test" (multi-view), "validate" (single view or the test views), "fit"."""
        key = stage_key(stage)
        h = self.hparams
        mode = "train" if key == "fit" else "test" if self.num_views(key) > 1 or key == "test" else "val"
        decoder = self.decoder(self.protocol.clip_len, FrameRule(self.protocol, mode),
                               None if mode == "train" else partial(resize_short_side, size=h.img_size),
                               thread_count=h.decode_threads)
        if key == "fit":
            return LabelledVideoDataset(self.split(key), self.protocol, mode, h.img_size, decoder,
                                        train_transform=self.transform(True))
        return LabelledVideoDataset(self.split(key), self.protocol, mode, h.img_size, decoder,
                                    num_clips=h.test_clips, num_crops=h.test_crops)


# ---------------------------------------------------------------------- benchmark presets
class KineticsDataModule(VideoClassificationDataModule):
    """Kinetics-400 / 600 / 700 with VideoMAE's lists: ``<data_root>/{train,val,test}.csv`` holding ``<path> <label>``
    lines (space-separated, no header; label = index in the alphabetical class list), paths relative to
    ``<data_root>/<video_dir>`` (absolute ones with ``allow_absolute_paths: true``). K400 protocol: 16 frames 4 apart, 5 clips x 3 crops.

    Args: data_root; variant (400 / 600 / 700, the number of classes); train_list / val_list / test_list (names
        under data_root, or absolute paths); video_dir; class_names (optional names file under data_root, e.g.
        ViFi-CLIP's labels/kinetics_400_labels.csv, id,name; or an absolute path, or a list); everything else as
        VideoClassificationDataModule.
    """

    def __init__(self, data_root: str, variant: int = 400, train_list: str = "train.csv", val_list: str = "val.csv",
                 test_list: str = "test.csv", video_dir: str = "", class_names: str | list[str] | None = None,
                 **kwargs) -> None:
        if variant not in (400, 600, 700):
            raise ValueError(f"Kinetics variant must be 400, 600 or 700, got {variant}")
        root = Path(data_root)
        kwargs = {"protocol": "dense", "num_frames": 16, "sampling_rate": 4, "test_clips": 5, "test_crops": 3, **kwargs}
        if isinstance(class_names, str):
            class_names = under_root(root, class_names)
        super().__init__(test=str(root / test_list), val=str(root / val_list), train=str(root / train_list),
                         video_root=str(root / video_dir), class_names=class_names, num_classes=variant,
                         list_format="list", **kwargs)
        self.variant = variant
        self.title = f"Kinetics-{variant}"

    def read_split(self, stage: str) -> LabelledVideos:
        h = self.hparams
        return read_space_list(self.annotation(stage), h.video_root, self.variant,
                               allow_absolute_paths=h.allow_absolute_paths, duplicates=h.duplicates)

    def read_class_names(self) -> list[str] | None:
        names = super().read_class_names() if self.hparams.class_names else None
        if names is not None and len(names) != self.variant:
            raise AnnotationError(f"{self.hparams.class_names}: {len(names)} class names for Kinetics-{self.variant}")
        return names

    def describe_source(self) -> str:
        return (f"{self.title}: put VideoMAE's lists train.csv / val.csv / test.csv ('<path> <label>' lines) under "
                "data_root and the videos where their paths point (video_dir)")


class SSv2DataModule(VideoClassificationDataModule):
    """Something-Something v2 from the official files: ``labels/something-something-v2-labels.json`` and the
    ``-train`` / ``-validation`` split JSONs (label = labels[template without "[" "]"]); videos
    ``<data_root>/<video_dir>/<id><video_ext>``. The official test split has no labels: ``test`` is the validation
    split, as VideoMAE evaluates. Protocol: 16 segments, 2 temporal views x 3 crops; no flip in training.
    """

    title = "SSv2"

    def __init__(self, data_root: str, labels: str = "labels/something-something-v2-labels.json",
                 train_split: str = "labels/something-something-v2-train.json",
                 val_split: str = "labels/something-something-v2-validation.json", test_split: str | None = None,
                 video_dir: str = "20bn-something-something-v2", video_ext: str = ".webm", **kwargs) -> None:
        root = Path(data_root)
        kwargs = {"protocol": "segment", "num_frames": 16, "test_clips": 2, "test_crops": 3, "train_flip_p": 0.0,
                  **kwargs}
        super().__init__(test=str(root / (test_split or val_split)), val=str(root / val_split),
                         train=str(root / train_split), video_root=str(root / video_dir), class_names=str(root / labels),
                         **kwargs)
        self.video_ext = video_ext

    def read_class_names(self) -> list[str]:
        path = self.hparams.class_names
        if not Path(path).is_file():
            raise FileNotFoundError(f"SSv2 label file not found: {path} ({self.describe_source()})")
        return read_ssv2_labels(path)

    def read_split(self, stage: str) -> LabelledVideos:
        return read_ssv2(self.annotation(stage), self.class_names, self.hparams.video_root, self.video_ext,
                         allow_absolute_paths=self.hparams.allow_absolute_paths)

    def describe_source(self) -> str:
        return ("SSv2: put the official labels/ folder (something-something-v2-labels.json, -train.json, "
                "-validation.json) and the videos (<id>.webm, or set video_ext) under data_root")


class _OfficialSplits(VideoClassificationDataModule):
    """UCF101 / HMDB51: official split files (split 1, 2 or 3); validation = test split (there is no other).

    class_names (optional): other names for the official classes, in their order (e.g. ViFi-CLIP's
    labels/ucf_101_labels.csv with spaced names, for zero-shot prompts): a file under data_root (or an absolute
    path) or a list; the labels still come from the split files."""

    reader = staticmethod(read_ucf101)

    def __init__(self, data_root: str, split: int, split_dir: str, video_dir: str, **kwargs) -> None:
        if split not in (1, 2, 3):
            raise ValueError(f"{self.title} split must be 1, 2 or 3, got {split}")
        root = Path(data_root)
        self.split_dir, self.split_number = root / split_dir, split
        marker = str(self.split_dir)  # annotation() names the folder; the split files are read from it
        super().__init__(test=marker, val=marker, train=marker, video_root=str(root / video_dir), **kwargs)
        if isinstance(self.hparams.class_names, str):  # (not by editing kwargs: jsonargparse reads this call)
            self.hparams.class_names = under_root(root, self.hparams.class_names)

    def read_split(self, stage: str) -> LabelledVideos:
        return self.reader(self.split_dir, self.hparams.video_root, self.split_number, stage_key(stage) == "fit",
                           allow_absolute_paths=self.hparams.allow_absolute_paths)[0]

    def read_class_names(self) -> list[str]:
        official = self.reader(self.split_dir, self.hparams.video_root, self.split_number, False,
                               allow_absolute_paths=self.hparams.allow_absolute_paths)[1]
        given = self.hparams.class_names
        if given is None:
            return official
        if isinstance(given, str) and not Path(given).is_file():
            raise FileNotFoundError(f"{self.title} class_names file not found: {given} ({self.describe_source()})")
        names = super().read_class_names()
        if len(names) != len(official):
            raise AnnotationError(f"{given if isinstance(given, str) else 'class_names'}: {len(names)} class names "
                                  f"but the {self.title} split files have {len(official)} classes")
        return names

    def _format(self, spec: str) -> str:
        return "official"


class UCF101DataModule(_OfficialSplits):
    """UCF101: ``<data_root>/ucfTrainTestlist/{classInd.txt, trainlist0N.txt, testlist0N.txt}`` and the videos in
    ``<data_root>/UCF-101/<Class>/v_*.avi``. Protocol as VideoMAE's UCF101 script: 16 frames 4 apart, 5 x 3 views."""

    title = "UCF101"
    reader = staticmethod(read_ucf101)

    def __init__(self, data_root: str, split: int = 1, split_dir: str = "ucfTrainTestlist", video_dir: str = "UCF-101",
                 **kwargs) -> None:
        kwargs = {"protocol": "dense", "num_frames": 16, "sampling_rate": 4, "test_clips": 5, "test_crops": 3, **kwargs}
        super().__init__(data_root, split, split_dir, video_dir, **kwargs)

    def check_paths(self, stages: tuple[str, ...] = ("test",)) -> None:
        for name in ["classInd.txt"] + [f"{'trainlist' if s == 'fit' else 'testlist'}0{self.split_number}.txt"
                                        for s in stages]:
            if not (self.split_dir / name).is_file():
                raise FileNotFoundError(f"UCF101 split file not found: {self.split_dir / name} ({self.describe_source()})")

    def describe_source(self) -> str:
        return "UCF101: put the official ucfTrainTestlist/ folder and UCF-101/<Class>/ videos under data_root"


class HMDB51DataModule(_OfficialSplits):
    """HMDB51: ``<data_root>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`` (flags 1 train, 2 test, 0
    unused) and the videos in ``<data_root>/<video_dir>/<class>/<video>.avi``. Views: 16 frames 2 apart, 10 x 3 (a
    VideoMAE fork's HMDB51 script; VideoMAE ships none)."""

    title = "HMDB51"
    reader = staticmethod(read_hmdb51)

    def __init__(self, data_root: str, split: int = 1, split_dir: str = "testTrainMulti_7030_splits",
                 video_dir: str = "hmdb51_org", **kwargs) -> None:
        kwargs = {"protocol": "dense", "num_frames": 16, "sampling_rate": 2, "test_clips": 10, "test_crops": 3,
                  **kwargs}
        super().__init__(data_root, split, split_dir, video_dir, **kwargs)

    def check_paths(self, stages: tuple[str, ...] = ("test",)) -> None:
        if not any(self.split_dir.glob(f"*_test_split{self.split_number}.txt")):
            raise FileNotFoundError(f"HMDB51 split files not found: {self.split_dir}/*_test_split{self.split_number}.txt "
                                    f"({self.describe_source()})")

    def describe_source(self) -> str:
        return ("HMDB51: put the official testTrainMulti_7030_splits/ folder and the videos (<class>/<video>.avi, "
                "under video_dir) under data_root")


__all__ = ["HMDB51DataModule", "KineticsDataModule", "LabelledVideoDataset", "SSv2DataModule", "UCF101DataModule",
           "VideoClassificationDataModule"]
