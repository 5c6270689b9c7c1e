"""LightningDataModules for text-video retrieval: one generic module and the benchmark presets.

Batches: evaluation ``{"video": (B, T, 3, H, W) float, "video_index": (B,) long}``; training adds one caption per
sample (``input_ids``, ``attention_mask`` (B, L)). For evaluation the module also exposes the whole text side of
the split (``eval_texts``) and the ground truth (``txt2vid``, ``vid2txt``, ``num_videos``).
"""
from __future__ import annotations

import logging
import random
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vidtldr_pl.text import BertWordPieceTokenizer

from .annotations import Duplicates, RetrievalIndex, build_index, read_annotations, under_root
from .generated import GeneratedOnFirstUse, stage_splits
from .sampling import ResumableDataLoader, ResumableSampler
from .skips import RecordsSkips
from .transforms import VideoTestTransform, VideoTrainTransform, resize_uint8
from .video import OnCorrupt, VideoDecoder

log = logging.getLogger(__name__)


class RetrievalVideoDataset(Dataset):
    """Decodes video i of an index: {"video": (T, 3, H, W), "video_index": i} (None when skipped)."""

    def __init__(self, videos: list[str], decoder: VideoDecoder, transform, train: bool = False) -> None:
        self.videos, self.decoder, self.transform, self.train = videos, decoder, transform, train

    def __len__(self) -> int:
        return len(self.videos)

    def load(self, i: int, seed: int | None = None) -> torch.Tensor | None:
        """Video i; training randomness (frames, crop, flip) from ``seed`` (unseeded when None)."""
        if not self.train:
            clip = self.decoder(self.videos[i])
            return None if clip is None else self.transform(clip.frames)
        clip = self.decoder(self.videos[i], rng=random.Random(seed))
        if clip is None:
            return None
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.transform(clip.frames, generator=generator)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        i, seed = key if isinstance(key, tuple) else (key, None)
        video = self.load(i, seed)
        return None if video is None else {"video": video, "video_index": i}


class RetrievalTrainDataset(RetrievalVideoDataset):
    """One sample per caption: video, its caption tokens and the video index (for VTM hard negatives)."""

    def __init__(self, index: RetrievalIndex, decoder: VideoDecoder, transform, tokens: dict[str, torch.Tensor]) -> None:
        super().__init__(index.videos, decoder, transform, train=True)
        self.txt2vid = [t if isinstance(t, int) else t[0] for t in index.txt2vid]
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.txt2vid)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        """Caption t (an index, or ``(index, seed)`` from ResumableSampler)."""
        t, seed = key if isinstance(key, tuple) else (key, None)
        v = self.txt2vid[t]
        video = self.load(v, seed)
        if video is None:
            return None
        return {"video": video, "video_index": v, "input_ids": self.tokens["input_ids"][t],
                "attention_mask": self.tokens["attention_mask"][t]}


def collate_skipping(batch: list[dict | None]) -> dict | None:
    """default_collate without the samples a skip policy dropped (None)."""
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


class VideoTextRetrievalDataModule(RecordsSkips, pl.LightningDataModule):
    """Any video-text retrieval set: an annotation file (JSON / JSONL / CSV / parquet / hf://name) + a video root.

    Args:
        test_annotation / val_annotation / train_annotation: annotation files (val falls back to test).
        video_root: folder the annotation's video paths are relative to.
        tokenizer: a directory with vocab.txt or a hub name (bert-base-uncased for UMT-B, bert-large-uncased for L),
            or "clip" (CLIP's BPE, for vificlip_*).
        tokenizer_flavor: "umt" (official: [CLS] text, no [SEP]) or "hf".
        max_txt_len: caption length in tokens. paragraph: join all captions of a video (ActivityNet, DiDeMo).
        has_multi_vision_gt: one caption matches several videos (SSv2). trimmed30: first 30 s only (DiDeMo).
        sample_test / sample_train: frame sampling ("middle" / "rand", as official).
        skip_errors: log and drop unreadable videos instead of failing (the default is to fail, naming the file).
        on_corrupt: a damaged video (frames lost, file cut short): "error" (default, one line naming the file) or
            "keep_decoded" (sample from the frames that did decode; a warning names the file).
        allow_absolute_paths: read annotation video paths outside video_root (absolute, or climbing out with "..");
            by default such a path is refused, naming the annotation file and the entry.
        duplicates: exact duplicate annotation rows are logged with their count and kept ("keep", the default: the
            official files are read as they are) or dropped ("drop").
        allow_images: read a still image (PNG, JPEG, ...) listed as a video as a one-frame video (refused by default).
        seed: training order and per-sample randomness (frames, crop, flip) derive from (seed, epoch, index).
        train_crop_scale / train_flip_p: RandomResizedCrop area range and horizontal-flip probability of training
            clips (official (0.5, 1) and 0.5; turn the flip off when captions say "left" / "right").
    """

    def __init__(
        self,
        test_annotation: str,
        video_root: str,
        val_annotation: str | None = None,
        train_annotation: str | None = None,
        tokenizer: str = "bert-base-uncased",
        tokenizer_flavor: str = "umt",
        max_txt_len: int = 32,
        num_frames: int = 12,
        img_size: int = 224,
        paragraph: bool = False,
        has_multi_vision_gt: bool = False,
        trimmed30: bool = False,
        sample_test: str = "middle",
        sample_train: str = "rand",
        batch_size: int = 32,
        eval_batch_size: int = 16,
        num_workers: int = 4,
        skip_errors: bool = False,
        video_key: str = "video",
        caption_key: str = "caption",
        seed: int = 0,
        train_crop_scale: tuple[float, float] = (0.5, 1.0),
        train_flip_p: float = 0.5,
        on_corrupt: OnCorrupt = "error",
        allow_absolute_paths: bool = False,
        duplicates: Duplicates = "keep",
        allow_images: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.indices: dict[str, RetrievalIndex] = {}
        self._tokenizer: BertWordPieceTokenizer | None = None

    # ------------------------------------------------------------------ set-up
    def _annotation(self, stage: str) -> str | None:
        h = self.hparams
        return {"fit": h.train_annotation, "validate": h.val_annotation or h.test_annotation, "test": h.test_annotation}[stage]

    def check_paths(self, stages: tuple[str, ...] = ("test",)) -> None:
        """Fail early with a short message when the data is missing."""
        root = Path(self.hparams.video_root)
        if not root.is_dir():
            raise FileNotFoundError(f"video root not found: {root} ({self.describe_source()})")
        for stage in stages:
            ann = self._annotation(stage)
            if ann is not None and not str(ann).startswith("hf://") and not Path(ann).is_file():
                raise FileNotFoundError(f"annotation file not found: {ann} ({self.describe_source()})")

    def describe_source(self) -> str:
        return "point video_root / *_annotation at your copy of the data"

    @property
    def tokenizer(self) -> BertWordPieceTokenizer:
        if self._tokenizer is None and self.hparams.tokenizer == "clip":  # CLIP's BPE (ViFi-CLIP; the vificlip extra)
            from vidtldr_pl.text.clip_tokenizer import CLIPTokenizer

            self._tokenizer = CLIPTokenizer()
        if self._tokenizer is None:
            self._tokenizer = BertWordPieceTokenizer.from_pretrained(self.hparams.tokenizer, flavor=self.hparams.tokenizer_flavor)
        return self._tokenizer

    def index(self, stage: str) -> RetrievalIndex:
        """The (cached) index of a stage: "fit", "validate" or "test"."""
        key = "validate" if stage in ("validate", "val") else stage
        if key not in self.indices:
            ann = self._annotation(key)
            if ann is None:
                raise ValueError(f"no annotation file configured for stage {key!r}")
            h = self.hparams
            entries = read_annotations(ann, h.video_key, h.caption_key, duplicates=h.duplicates)
            self.indices[key] = build_index(entries, h.video_root, h.paragraph, h.has_multi_vision_gt,
                                            allow_absolute_paths=h.allow_absolute_paths)
        return self.indices[key]

    def setup(self, stage: str) -> None:
        stages = {"fit": ("fit", "validate"), "validate": ("validate",), "test": ("test",), "predict": ("test",)}[stage]
        self.check_paths(stages)
        for s in stages:
            if self._annotation(s) is not None:
                self.check_videos(s)

    def check_videos(self, stage: str) -> None:
        """Every video of the stage's annotation must exist: a short error now instead of a decode error in the
        middle of an epoch. With skip_errors the missing ones are logged (and dropped when they are loaded)."""
        videos = self.index(stage).videos
        missing = [v for v in videos if not Path(v).is_file()]
        if not missing:
            return
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        message = (f"{len(missing)} of {len(videos)} video files of the {stage} annotation not found under "
                   f"{self.hparams.video_root}: {shown}")
        if self.hparams.skip_errors:
            log.warning("%s (skip_errors: dropped when loaded)", message)
            return
        raise FileNotFoundError(f"{message} (check video_root and the annotation's video paths)")

    # ------------------------------------------------------------------ evaluation contract
    def _eval_stage(self) -> str:
        trainer = getattr(self, "trainer", None)
        return "test" if trainer is not None and trainer.testing else "validate"

    def eval_texts(self, stage: str | None = None) -> dict[str, torch.Tensor]:
        """All captions of the evaluation split, tokenized: input_ids / attention_mask (Nt, L)."""
        return self.tokenizer(self.index(stage or self._eval_stage()).texts, max_length=self.hparams.max_txt_len)

    @property
    def txt2vid(self) -> list[int | list[int]]:
        return self.index(self._eval_stage()).txt2vid

    @property
    def vid2txt(self) -> list[list[int] | int]:
        return self.index(self._eval_stage()).vid2txt

    @property
    def num_videos(self) -> int:
        return len(self.index(self._eval_stage()).videos)

    # ------------------------------------------------------------------ loaders
    def _decoder(self, train: bool) -> VideoDecoder:
        h = self.hparams
        return VideoDecoder(num_frames=h.num_frames, sample=h.sample_train if train else h.sample_test,
                            trimmed30=h.trimmed30, skip_errors=h.skip_errors, on_corrupt=h.on_corrupt,
                            skip_log=self.skip_log_path(), allow_images=h.allow_images,
                            # evaluation: the test transform's resize, frame by frame as they are decoded
                            resize=None if train else partial(resize_uint8, size=h.img_size))

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = RetrievalVideoDataset(self.index(stage).videos, self._decoder(False), VideoTestTransform(self.hparams.img_size))
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, num_workers=self.hparams.num_workers,
                          collate_fn=collate_skipping)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validate")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def train_dataloader(self) -> DataLoader:
        """One sample per caption, in an order and with randomness fixed by (seed, epoch, index): ResumableSampler
        (this process's share under DDP). When the trainer resumes mid-epoch, the samples already trained on are
        skipped, so the run continues exactly where it stopped."""
        index = self.index("fit")
        tokens = self.tokenizer(index.texts, max_length=self.hparams.max_txt_len)
        h = self.hparams
        transform = VideoTrainTransform(h.img_size, scale=tuple(h.train_crop_scale), flip_p=h.train_flip_p)
        dataset = RetrievalTrainDataset(index, self._decoder(True), transform, tokens)
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=h.seed, drop_last=True)
        if trainer is not None:
            epoch_len = epoch_length(trainer, len(sampler) // h.batch_size)

            def position() -> tuple[int, int]:  # read when each pass starts: resumes at the right epoch and sample
                epoch, done = trained_position(trainer, epoch_len)
                return epoch, done * h.batch_size

            sampler.position = position
        return ResumableDataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.hparams.num_workers, collate_fn=collate_skipping,
                          persistent_workers=self.hparams.num_workers > 0)


def epoch_length(trainer: pl.Trainer, batches: int) -> int:
    """Training batches per epoch under ``limit_train_batches`` (an int caps, a float is a fraction)."""
    limit = trainer.limit_train_batches
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def trained_position(trainer: pl.Trainer, epoch_len: int) -> tuple[int, int]:
    """(epoch, batches of it already trained) where the next training batch comes from.

    Derived from the count of all training batches processed (restored with a checkpoint), not from Lightning's
    epoch counters: a checkpoint written after an epoch's last batch or after its validation does not count that
    epoch as finished when the loader is built, and a ``max_steps`` run restarted there can pass ``set_epoch`` an
    epoch ahead of ``current_epoch``. Every epoch has ``epoch_len`` batches (drop_last)."""
    total = int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
    if epoch_len <= 0:
        return trainer.current_epoch, 0
    return divmod(total, epoch_len)


# ---------------------------------------------------------------------- benchmark presets
# (annotation file stem for test, for train, max_txt_len, paragraph, has_multi_vision_gt, trimmed30)
PRESETS = {
    "msrvtt": ("msrvtt_ret_test1k", "msrvtt_ret_train9k", 32, False, False, False),
    "msvd": ("msvd_ret_test", "msvd_ret_train", 64, False, False, False),
    "didemo": ("didemo_ret_test", "didemo_ret_train", 64, True, False, True),
    "anet": ("anet_ret_val", "anet_ret_train", 150, True, False, False),
    "lsmdc": ("lsmdc_ret_test_1000", "lsmdc_ret_train_plus_val", 96, False, False, False),
    "ssv2_label": ("ssv2_ret_label_val_small", "ssv2_ret_label_train", 25, False, True, False),
    "ssv2_template": ("ssv2_ret_template_val_small", "ssv2_ret_template_train", 25, False, True, False),
}


class PresetRetrievalDataModule(VideoTextRetrievalDataModule):
    """A benchmark in the UMT / VINDLU layout: <data_root>/<anno_dir>/<stem>.json annotations and the videos
    under <data_root>/<video_dir>. Subclasses set ``preset`` (a key of PRESETS) and ``title``.

    Args:
        data_root: the dataset folder. anno_dir / video_dir: sub-folders. max_txt_len: None = the official value.
        test_annotation / train_annotation / video_root: override the preset's files; a relative path is taken
            under data_root (an absolute one as it is).
        **kwargs: any argument of VideoTextRetrievalDataModule (batch_size, num_frames, tokenizer, ...).
    """

    preset = "msrvtt"
    title = "MSRVTT"

    def __init__(
        self,
        data_root: str,
        anno_dir: str = "anno_downstream",
        video_dir: str = "videos",
        max_txt_len: int | None = None,
        test_annotation: str | None = None,
        train_annotation: str | None = None,
        video_root: str | None = None,
        **kwargs,
    ) -> None:
        test_stem, train_stem, max_len, paragraph, multi_vision, trimmed = PRESETS[self.preset]
        root = Path(data_root)
        super().__init__(
            test_annotation=under_root(root, test_annotation) or str(root / anno_dir / f"{test_stem}.json"),
            train_annotation=under_root(root, train_annotation) or str(root / anno_dir / f"{train_stem}.json"),
            video_root=under_root(root, video_root) or str(root / video_dir),
            max_txt_len=max_txt_len or max_len,
            paragraph=paragraph,
            has_multi_vision_gt=multi_vision,
            trimmed30=trimmed,
            **kwargs,
        )

    def describe_source(self) -> str:
        stem = PRESETS[self.preset][0]
        return (f"{self.title}: put the videos under <data_root>/videos and the UMT annotation files ({stem}.json, "
                "...) under <data_root>/anno_downstream; both are described in the README")


class MSRVTTDataModule(PresetRetrievalDataModule):
    preset, title = "msrvtt", "MSRVTT"


class MSVDDataModule(PresetRetrievalDataModule):
    preset, title = "msvd", "MSVD"


class DiDeMoDataModule(PresetRetrievalDataModule):
    preset, title = "didemo", "DiDeMo"


class ActivityNetDataModule(PresetRetrievalDataModule):
    preset, title = "anet", "ActivityNet"


class LSMDCDataModule(PresetRetrievalDataModule):
    preset, title = "lsmdc", "LSMDC"


class SSv2LabelDataModule(PresetRetrievalDataModule):
    preset, title = "ssv2_label", "SSv2-Label"


class SSv2TemplateDataModule(PresetRetrievalDataModule):
    preset, title = "ssv2_template", "SSv2-Template"


class SyntheticRetrievalDataModule(GeneratedOnFirstUse, VideoTextRetrievalDataModule):
    """The embedded benchmark (vidtldr_pl.data_modules.synthetic), generated into cache_dir on first use from the seed.

    Args: seed (of the generated data and of the training order), num_train / num_val / num_test videos, frames and
    size of the written clips; tokenizer: "synthetic" (the WordPiece vocabulary generated with the data, for UMT) or
    "clip" (CLIP's BPE, for vificlip_*); everything else as VideoTextRetrievalDataModule (num_frames sampled per clip,
    img_size, batch sizes, workers, ...).
    """

    def __init__(
        self,
        cache_dir: str = ".cache/synthetic",
        seed: int = 0,
        num_train: int = 4000,
        num_val: int = 200,
        num_test: int = 500,
        clip_frames: int = 16,
        clip_size: int = 128,
        max_txt_len: int = 24,
        num_frames: int = 8,
        img_size: int = 112,
        tokenizer: str = "synthetic",
        **kwargs,
    ) -> None:
        if tokenizer not in ("synthetic", "clip"):
            raise ValueError(f"tokenizer must be 'synthetic' or 'clip', got {tokenizer!r}")
        self.synthetic = (cache_dir, seed, {"train": num_train, "val": num_val, "test": num_test}, clip_frames, clip_size)
        self.synthetic_tokenizer = tokenizer == "synthetic"
        root = Path(cache_dir) / "pending"
        super().__init__(
            test_annotation=str(root / "anno" / "test.json"), video_root=str(root / "videos"),
            val_annotation=str(root / "anno" / "val.json"), train_annotation=str(root / "anno" / "train.json"),
            tokenizer=str(root / "tokenizer") if self.synthetic_tokenizer else "clip", tokenizer_flavor="umt",
            max_txt_len=max_txt_len,
            num_frames=num_frames, img_size=img_size, seed=seed, **kwargs,
        )

    def _resolve(self, stages: tuple[str, ...]) -> None:
        """Generate the splits these stages read (once, into cache_dir) and point the annotations at them."""
        from .synthetic import SyntheticConfig, ensure_dataset

        cache_dir, seed, sizes, frames, size = self.synthetic
        splits = stage_splits(stages)
        wanted = {split: (n if split in splits else 0) for split, n in sizes.items()}  # the others: not generated
        out = ensure_dataset(cache_dir, SyntheticConfig(seed=seed, frames=frames, size=size), wanted)
        h = self.hparams
        for split, attr in (("train", "train_annotation"), ("val", "val_annotation"), ("test", "test_annotation")):
            if split in splits:
                setattr(h, attr, str(out / "anno" / f"{split}_{sizes[split]}.json") if sizes[split] else None)
        h.video_root = str(out / "videos")
        if self.synthetic_tokenizer:
            h.tokenizer = str(out / "tokenizer")
