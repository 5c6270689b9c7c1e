"""``VideoDataModule``: what the video DataModules share (retrieval, classification, QA / multiple choice, and the
synthetic ones built on them): Lightning stages -> the annotations they read; the set-up checks (one line naming a
missing path or video before any decoding); a VideoDecoder with the module's damage and skip policy; the evaluation
loaders and the resumable training loader (``sampling``); the tokenizer; the report of skipped videos.

A subclass keeps what differs: its init arguments (``save_hyperparameters(init_args(locals()))``), the names of its
annotation options, ``videos(stage)``, ``dataset(stage)``, ``describe_source()`` and, for batches other than
``default_collate`` of the samples, ``collate``.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from vidtldr_pl.text import BertWordPieceTokenizer

from .clips import Transform, collate_skipping
from .sampling import ResumableDataLoader, ResumableSampler, trainer_position
from .skips import SkipLog
from .transforms import VideoTestTransform, VideoTrainTransform, resize_uint8
from .video import FrameResize, SampleType, VideoDecoder

log = logging.getLogger(__name__)

__all__ = ["READS", "STAGES", "VideoDataModule", "init_args", "listed", "stage_key"]

#: Lightning's stages and the aliases accepted -> the stage key ("fit", "validate", "test").
STAGES = {"fit": "fit", "train": "fit", "validate": "validate", "val": "validate", "validation": "validate",
          "test": "test", "predict": "test"}
#: The annotations a stage reads, by stage key.
READS = {"fit": ("fit", "validate"), "validate": ("validate",), "test": ("test",)}


def stage_key(stage: str) -> str:
    """"fit", "validate" or "test" for a Lightning stage or an alias (ValueError for anything else)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    return STAGES[stage]


def init_args(frame: dict[str, Any]) -> dict[str, Any]:
    """An ``__init__``'s arguments from its ``locals()``: what a DataModule saves as hyperparameters."""
    return {k: v for k, v in frame.items() if k not in ("self", "__class__")}


def listed(paths: list[str], most: int) -> str:
    """The first ``most`` paths, comma-separated, and how many more."""
    return ", ".join(paths[:most]) + (f", ... ({len(paths) - most} more)" if len(paths) > most else "")


class VideoDataModule(pl.LightningDataModule, ABC):
    """The base of the video DataModules. Hyperparameters it reads: ``video_root``, ``skip_errors``, ``on_corrupt``,
    ``allow_images``, ``img_size``, ``batch_size`` / ``eval_batch_size`` / ``num_workers``, ``seed`` (training);
    where a subclass uses them: ``num_frames`` / ``sample_train`` / ``sample_test`` (:meth:`clip_decoder`),
    ``train_crop_scale`` / ``train_flip_p`` (:meth:`transform`), ``tokenizer`` / ``tokenizer_flavor``."""

    #: The init arguments naming the train, val and test annotations.
    annotation_options: tuple[str, str, str] = ("train_annotation", "val_annotation", "test_annotation")
    #: Batches: ``default_collate`` of the samples a skip policy kept (None when none is left).
    collate = staticmethod(collate_skipping)
    _tokenizer: BertWordPieceTokenizer | None = None
    _skip_log: SkipLog | None = None

    # ------------------------------------------------------------------ what a subclass states
    @abstractmethod
    def videos(self, stage: str) -> list[str]:
        """The video paths of the stage's annotation, in sample order (reading it checks its entries)."""

    @abstractmethod
    def dataset(self, stage: str) -> Dataset:
        """The dataset of a stage: "fit" (keys ``(index, seed)``) or an evaluation stage."""

    def describe_source(self) -> str:
        """Where the data should be (ends the one-line errors of a missing path)."""
        return "point video_root / *_annotation at your copy of the data"

    # ------------------------------------------------------------------ stages
    def annotation(self, stage: str) -> str | None:
        """The annotation a stage reads ("fit", "validate" (falls back to test), "test", or an alias)."""
        train, val, test = (self.hparams[option] for option in self.annotation_options)
        return {"fit": train, "validate": val or test, "test": test}[stage_key(stage)]

    def annotation_file(self, stage: str) -> str:
        """:meth:`annotation`, required (ValueError when the stage has none)."""
        annotation = self.annotation(stage)
        if annotation is None:
            raise ValueError(f"no annotation file configured for stage {stage_key(stage)!r}")
        return annotation

    def _eval_stage(self) -> str:
        """The stage an evaluation reads now: "test" while the trainer tests, else "validate"."""
        return "test" if self.trainer is not None and self.trainer.testing else "validate"

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        """Check what the stage reads before anything is decoded: the paths, then each annotation's videos."""
        stages = READS[stage_key(stage)]
        self.check_paths(stages)
        for s in stages:
            if self.annotation(s) is not None:
                self.check_stage(s)

    def required_files(self, stages: tuple[str, ...]) -> list[str]:
        """The files these stages read (they must exist at set-up): their annotations."""
        return [a for a in (self.annotation(s) for s in stages) if a is not None]

    def check_paths(self, stages: tuple[str, ...] = ("test",)) -> None:
        """Fail early with one short line when the video folder or a file is missing."""
        root = self.hparams.video_root
        if not Path(root).is_dir():
            raise FileNotFoundError(f"video root not found: {root} ({self.describe_source()})")
        for file in self.required_files(stages):
            if not Path(file).is_file():
                raise FileNotFoundError(f"annotation file not found: {file} ({self.describe_source()})")

    def check_stage(self, stage: str) -> None:
        """Check a stage's annotation at set-up: its videos must exist (:meth:`check_videos`)."""
        self.check_videos(stage)

    def check_videos(self, stage: str) -> None:
        """Every video of the stage's annotation must exist: a short error now instead of a decode error in the
        middle of an epoch. With skip_errors the missing ones are logged (and dropped when they are loaded)."""
        videos = self.videos(stage)
        missing = [v for v in videos if not Path(v).is_file()]
        if not missing:
            return
        message, hint = self.missing_videos(stage, missing, len(videos))
        if self.skip_errors:
            log.warning("%s (skip_errors: dropped when loaded)", message)
            return
        raise FileNotFoundError(f"{message} ({hint})")

    def missing_videos(self, stage: str, missing: list[str], total: int) -> tuple[str, str]:
        """(message, hint) of :meth:`check_videos`' line for the ``missing`` videos of ``total``."""
        return (f"{len(missing)} of {total} video files of the {stage} annotation not found under "
                f"{self.hparams.video_root}: {listed(missing, 5)}", "check video_root and the annotation's video paths")

    # ------------------------------------------------------------------ decoding
    def decoder(self, num_frames: int, sample: SampleType, resize: FrameResize | None = None,
                **options: Any) -> VideoDecoder:
        """A decoder of ``num_frames`` frames by ``sample`` with this module's damage and skip policy (on_corrupt,
        skip_errors and its log, allow_images); ``options``: more VideoDecoder fields (trimmed30, thread_count)."""
        h = self.hparams
        return VideoDecoder(num_frames=num_frames, sample=sample, skip_errors=h.skip_errors, on_corrupt=h.on_corrupt,
                            skip_log=self.skip_log_path(), allow_images=h.allow_images, resize=resize, **options)

    def clip_decoder(self, train: bool, **options: Any) -> VideoDecoder:
        """UMT's decoding: ``num_frames`` frames by ``sample_train`` / ``sample_test``; evaluation frames get the test
        transform's resize as they are decoded."""
        h = self.hparams
        return self.decoder(h.num_frames, h.sample_train if train else h.sample_test,
                            None if train else partial(resize_uint8, size=h.img_size), **options)

    def transform(self, train: bool) -> Transform:
        """UMT's clip transform: training random resized crop (``train_crop_scale``) and flip (``train_flip_p``), or
        the test resize; both to ``img_size`` and ImageNet-normalised."""
        h = self.hparams
        if train:
            return VideoTrainTransform(h.img_size, scale=tuple(h.train_crop_scale), flip_p=h.train_flip_p)
        return VideoTestTransform(h.img_size)

    # ------------------------------------------------------------------ loaders
    def _eval_loader(self, stage: str) -> DataLoader:
        h = self.hparams
        return DataLoader(self.dataset(stage), batch_size=h.eval_batch_size, num_workers=h.num_workers,
                          collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader | list:
        """The validation split's loader; none (no validation) when neither val nor test is configured."""
        return self._eval_loader("validate") if self.annotation("validate") is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def train_dataloader(self) -> DataLoader:
        """The training set shuffled, in an order and with randomness fixed by (seed, epoch, index): ResumableSampler
        (this process's share under DDP). When the trainer resumes mid-epoch, the samples already trained on are
        skipped, so the run continues exactly where it stopped."""
        h = self.hparams
        dataset = self.dataset("fit")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=h.seed, drop_last=True)
        if trainer is not None:
            sampler.position = trainer_position(trainer, len(sampler) // h.batch_size, h.batch_size)
        return ResumableDataLoader(dataset, batch_size=h.batch_size, sampler=sampler, drop_last=True,
                                   num_workers=h.num_workers, collate_fn=self.collate,
                                   persistent_workers=h.num_workers > 0)

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self) -> BertWordPieceTokenizer:
        """The ``tokenizer`` option, loaded once: "clip" is CLIP's BPE (ViFi-CLIP; the vificlip extra), anything
        else a WordPiece vocabulary (a directory with vocab.txt or a hub name) in ``tokenizer_flavor``."""
        if self._tokenizer is None and self.hparams.tokenizer == "clip":
            from vidtldr_pl.text.clip_tokenizer import CLIPTokenizer

            self._tokenizer = CLIPTokenizer()
        if self._tokenizer is None:
            self._tokenizer = BertWordPieceTokenizer.from_pretrained(self.hparams.tokenizer,
                                                                     flavor=self.hparams.tokenizer_flavor)
        return self._tokenizer

    # ------------------------------------------------------------------ skipped videos
    @property
    def skip_errors(self) -> bool:
        """Unreadable and missing videos are logged and dropped instead of failing."""
        return bool(self.hparams.skip_errors)

    def skip_log_path(self) -> str | None:
        """The file this module's decoders append skipped videos to (None without skip_errors)."""
        if not self.skip_errors:
            return None
        if self._skip_log is None:
            self._skip_log = SkipLog()
        return self._skip_log.path

    def take_skipped(self) -> list[dict[str, str]]:
        """``[{"video": path, "reason": why}]`` skipped since the last call (this process's loaders)."""
        return self._skip_log.take() if self._skip_log is not None else []
