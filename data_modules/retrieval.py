"""LightningDataModules for text-video retrieval: one generic module and the benchmark presets.

Batches: evaluation ``{"video": (B, T, 3, H, W) float, "video_index": (B,) long}``; training adds one caption per
sample (``input_ids``, ``attention_mask`` (B, L)). For evaluation the module also exposes the whole text side of
the split (``eval_texts``) and the ground truth (``txt2vid``, ``vid2txt``, ``num_videos``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .annotations import Duplicates, RetrievalIndex, build_index, read_annotations, under_root
from .base import VideoDataModule, init_args, stage_key
from .clips import ClipDataset, Transform, sample_key
from .generated import GeneratedOnFirstUse
from .synthetic import SyntheticConfig, ensure_dataset
from .video import OnCorrupt, VideoDecoder


class RetrievalTrainDataset(ClipDataset):
    """One sample per caption: video, its caption tokens and the video index (for VTM hard negatives)."""

    def __init__(self, index: RetrievalIndex, decoder: VideoDecoder, transform: Transform,
                 tokens: dict[str, torch.Tensor]) -> None:
        super().__init__(index.videos, decoder, transform, train=True)
        self.txt2vid = [t if isinstance(t, int) else t[0] for t in index.txt2vid]
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.txt2vid)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        """Caption t (an index, or ``(index, seed)`` from ResumableSampler)."""
        t, seed = sample_key(key)
        v = self.txt2vid[t]
        video = self.load(v, seed)
        if video is None:
            return None
        return {"video": video, "video_index": v, "input_ids": self.tokens["input_ids"][t],
                "attention_mask": self.tokens["attention_mask"][t]}


class VideoTextRetrievalDataModule(VideoDataModule):
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
        self.save_hyperparameters(init_args(locals()))
        self.indices: dict[str, RetrievalIndex] = {}

    # ------------------------------------------------------------------ set-up
    def required_files(self, stages: tuple[str, ...]) -> list[str]:
        return [a for a in super().required_files(stages) if not str(a).startswith("hf://")]  # hub: read at setup

    def index(self, stage: str) -> RetrievalIndex:
        """The (cached) index of a stage: "fit", "validate" or "test"."""
        key = stage_key(stage)
        if key not in self.indices:
            h = self.hparams
            entries = read_annotations(self.annotation_file(key), h.video_key, h.caption_key, duplicates=h.duplicates)
            self.indices[key] = build_index(entries, h.video_root, h.paragraph, h.has_multi_vision_gt,
                                            allow_absolute_paths=h.allow_absolute_paths)
        return self.indices[key]

    def videos(self, stage: str) -> list[str]:
        return self.index(stage).videos

    # ------------------------------------------------------------------ evaluation contract
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

    # ------------------------------------------------------------------ datasets
    def dataset(self, stage: str) -> ClipDataset:
        """Evaluation: every video of the split, once. "fit": one sample per caption (the captions tokenized)."""
        index = self.index(stage)
        if stage_key(stage) != "fit":
            return ClipDataset(index.videos, self.clip_decoder(False, trimmed30=self.hparams.trimmed30),
                               self.transform(False))
        tokens = self.tokenizer(index.texts, max_length=self.hparams.max_txt_len)
        return RetrievalTrainDataset(index, self.clip_decoder(True, trimmed30=self.hparams.trimmed30),
                                     self.transform(True), tokens)


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
        self.cache_dir, self.clip_config = cache_dir, SyntheticConfig(seed=seed, frames=clip_frames, size=clip_size)
        self.generated_sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.synthetic_tokenizer = tokenizer == "synthetic"
        root = Path(cache_dir) / "pending"
        super().__init__(
            test_annotation=str(root / "anno" / "test.json"), video_root=str(root / "videos"),
            val_annotation=str(root / "anno" / "val.json"), train_annotation=str(root / "anno" / "train.json"),
            tokenizer=str(root / "tokenizer") if self.synthetic_tokenizer else "clip", tokenizer_flavor="umt",
            max_txt_len=max_txt_len,
            num_frames=num_frames, img_size=img_size, seed=seed, **kwargs,
        )

    def generate(self, sizes: dict[str, int]) -> Path:
        return ensure_dataset(self.cache_dir, self.clip_config, sizes)

    def use(self, folder: Path) -> None:
        super().use(folder)
        if self.synthetic_tokenizer:
            self.hparams.tokenizer = str(folder / "tokenizer")
