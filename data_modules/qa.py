"""LightningDataModules for video QA (MSRVTT-QA, MSVD-QA, ActivityNet-QA) and MSRVTT-MC, UMT / VINDLU JSON.

QA files: a JSON list of ``{"video", "question", "answer" (str; training: str or list), "question_id"}`` (optional
``"type"`` for per-type accuracy) and an answer-list file (JSON list of strings). Questions are cleaned by the
official ``pre_text`` and tokenized to ``max_q_len`` (25); answers are ``answer + " [SEP]"`` tokenized to
``max_a_len`` (5).

QA batches: ``{"video": (B, T, 3, H, W), "input_ids" / "attention_mask": (B, Lq), "index": (B,)}``; training adds
``answer_ids`` / ``answer_mask`` (A, La), ``answer_counts`` (B,), ``answer_weights`` (A,) (a question with several
answers: one row per distinct answer, weight = its share, as official).

MC files: ``{"video", "caption": [5 str], "answer": int}``; batches ``{"video", "input_ids" / "attention_mask":
(B, 5, L), "answer": (B,), "index": (B,)}``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from vidtldr_pl.text import answer_texts, clean_caption

from .annotations import AnnotationError, under_root, video_path
from .base import VideoDataModule, init_args, stage_key
from .clips import ClipDataset, Transform, sample_key
from .video import OnCorrupt, VideoDecoder


def _read_json_list(path: str | Path) -> list:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, list) or not raw:
        raise AnnotationError(f"{path}: expected a non-empty JSON list, got {type(raw).__name__}")
    return raw


def read_answer_list(path: str | Path) -> list[str]:
    """The answer-list file: a JSON list of strings."""
    raw = _read_json_list(path)
    bad = next((i for i, a in enumerate(raw) if not isinstance(a, str)), None)
    if bad is not None:
        raise AnnotationError(f"{path}: answer list entry {bad} is {raw[bad]!r:.60}, expected a string")
    return raw


def read_qa_annotations(path: str | Path, train: bool = False) -> list[dict[str, Any]]:
    """QA entries, checked: ``video``, ``question`` strings; ``answer`` a string (training: or a non-empty list of
    strings); ``question_id`` required for evaluation (training entries without one get their position)."""
    out = []
    for i, raw in enumerate(_read_json_list(path)):
        if not isinstance(raw, dict):
            raise AnnotationError(f"{path}: entry {i} is a {type(raw).__name__}, expected an object")
        for key in ("video", "question", "answer") + (() if train else ("question_id",)):
            if key not in raw:
                raise AnnotationError(f"{path}: entry {i} has no {key!r} key (keys: {sorted(raw)})")
        for key in ("video", "question"):
            if not isinstance(raw[key], str):
                raise AnnotationError(f"{path}: entry {i} key {key!r} must be a string, got {raw[key]!r:.60}")
        answer = raw["answer"]
        ok = isinstance(answer, str) or (train and isinstance(answer, list) and answer
                                         and all(isinstance(a, str) for a in answer))
        if not ok:
            kind = "a string or a non-empty list of strings" if train else "a string"
            raise AnnotationError(f"{path}: entry {i} key 'answer' must be {kind}, got {answer!r:.60}")
        out.append({**raw, "question_id": raw.get("question_id", i)})
    return out


def answer_weights(answer: str | list[str]) -> tuple[list[str], list[float]]:
    """Distinct answers of a question and their weights (share of the annotators' answers), as official."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    counts = Counter(answers)
    return list(counts), [c / len(answers) for c in counts.values()]


def video_paths(anns: list[dict], video_root: str, where: str = "", allow_absolute_paths: bool = False) -> list[str]:
    """The entries' ``video`` under ``video_root``; a path outside it is refused (AnnotationError naming ``where``
    and the entry) unless ``allow_absolute_paths``."""
    return [video_path(video_root, a["video"], f"{where or 'annotation'}: entry {i}", allow_absolute_paths)
            for i, a in enumerate(anns)]


class QADataset(ClipDataset):
    """Question i: {"video", "question" (cleaned), "index", "answers", "weights"} (None when its video is skipped).
    ``videos[i]``: the video of ``anns[i]``."""

    def __init__(self, videos: list[str], anns: list[dict], decoder: VideoDecoder, transform: Transform,
                 train: bool) -> None:
        super().__init__(videos, decoder, transform, train)
        self.anns = anns

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        i, seed = sample_key(key)
        video = self.load(i, seed)
        if video is None:
            return None
        answers, weights = answer_weights(self.anns[i]["answer"])
        return {"video": video, "question": clean_caption(self.anns[i]["question"]), "index": i,
                "answers": answers, "weights": weights}


class VideoQADataModule(VideoDataModule):
    """Any video QA set in the UMT / VINDLU JSON layout.

    Args:
        test_annotation / val_annotation (falls back to test) / train_annotation: QA JSON files.
        answer_list: the answer-list JSON file (candidates ranked at evaluation).
        video_root: folder of the ``video`` paths. tokenizer: vocab directory or hub name (bert-base-uncased /
            bert-large-uncased). tokenizer_flavor: "umt" (official) or "hf".
        max_q_len / max_a_len: question / answer tokens (official 25 / 5).
        num_frames / img_size / sample_test / sample_train: official 12, 224, "middle", "rand".
        batch_size / eval_batch_size / num_workers / skip_errors / seed / train_crop_scale / train_flip_p /
            on_corrupt / allow_absolute_paths / allow_images: as the retrieval DataModule.
    """

    def __init__(
        self,
        test_annotation: str,
        answer_list: str,
        video_root: str,
        val_annotation: str | None = None,
        train_annotation: str | None = None,
        tokenizer: str = "bert-base-uncased",
        tokenizer_flavor: str = "umt",
        max_q_len: int = 25,
        max_a_len: int = 5,
        num_frames: int = 12,
        img_size: int = 224,
        sample_test: str = "middle",
        sample_train: str = "rand",
        batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        skip_errors: bool = False,
        seed: int = 0,
        train_crop_scale: tuple[float, float] = (0.5, 1.0),
        train_flip_p: float = 0.5,
        on_corrupt: OnCorrupt = "error",
        allow_absolute_paths: bool = False,
        allow_images: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(init_args(locals()))
        self._anns: dict[str, list[dict]] = {}
        self._answer_list: list[str] | None = None

    # ------------------------------------------------------------------ set-up
    def describe_source(self) -> str:
        return "point video_root / *_annotation / answer_list at your copy of the data"

    def required_files(self, stages: tuple[str, ...]) -> list[str]:
        return [*super().required_files(stages), self.hparams.answer_list]

    def check_stage(self, stage: str) -> None:
        """Malformed entries and paths outside video_root: one line now, before any decoding."""
        self.videos(stage)

    def videos(self, stage: str) -> list[str]:
        h = self.hparams
        return video_paths(self.annotations(stage), h.video_root, str(self.annotation(stage)), h.allow_absolute_paths)

    def annotations(self, stage: str) -> list[dict]:
        key = stage_key(stage)
        if key not in self._anns:
            self._anns[key] = read_qa_annotations(self.annotation_file(key), train=key == "fit")
        return self._anns[key]

    # ------------------------------------------------------------------ QAEvalData
    @property
    def answer_list(self) -> list[str]:
        if self._answer_list is None:
            self._answer_list = read_answer_list(self.hparams.answer_list)
        return self._answer_list

    def answer_tokens(self) -> dict[str, torch.Tensor]:
        """The answer list tokenized as official: ``answer [SEP]``, (A, max_a_len)."""
        return self.tokenizer(answer_texts(self.answer_list), max_length=self.hparams.max_a_len)

    def eval_annotations(self, stage: str | None = None) -> list[dict]:
        return self.annotations(stage or self._eval_stage())

    # ------------------------------------------------------------------ datasets
    def collate(self, items: list[dict | None]) -> dict | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        h = self.hparams
        q = self.tokenizer([it["question"] for it in items], max_length=h.max_q_len)
        answers = [a for it in items for a in it["answers"]]
        a = self.tokenizer(answer_texts(answers), max_length=h.max_a_len)
        return {"video": torch.stack([it["video"] for it in items]), "input_ids": q["input_ids"],
                "attention_mask": q["attention_mask"], "index": torch.tensor([it["index"] for it in items]),
                "answer_ids": a["input_ids"], "answer_mask": a["attention_mask"],
                "answer_counts": torch.tensor([len(it["answers"]) for it in items]),
                "answer_weights": torch.tensor([w for it in items for w in it["weights"]])}

    def dataset(self, stage: str) -> QADataset:
        """The questions of a stage ("fit": shuffled by the resumable training loader)."""
        train = stage_key(stage) == "fit"
        return QADataset(self.videos(stage), self.annotations(stage), self.clip_decoder(train), self.transform(train),
                         train)


# (test stem, val stem or None, train stem, answer-list stem); file names of the UMT / VINDLU releases
QA_PRESETS = {
    "msrvtt_qa": ("msrvtt_qa_test", "msrvtt_qa_val", "msrvtt_qa_train", "msrvtt_qa_answer_list"),
    "msvd_qa": ("msvd_qa_test", None, "msvd_qa_train", "msvd_qa_answer_list"),  # official val entry commented out
    "anet_qa": ("anet_qa_test", "anet_qa_val", "anet_qa_train", "anet_qa_answer_list"),
}


class PresetQADataModule(VideoQADataModule):
    """A QA benchmark in the UMT layout: <data_root>/<anno_dir>/<stem>.json and videos under <data_root>/<video_dir>.

    Args: data_root, anno_dir, video_dir; explicit file arguments override the preset (a relative path is taken
    under data_root, an absolute one as it is); **kwargs as VideoQADataModule.
    """

    preset = "msrvtt_qa"
    title = "MSRVTT-QA"

    def __init__(self, data_root: str, anno_dir: str = "anno_downstream", video_dir: str = "videos",
                 test_annotation: str | None = None, val_annotation: str | None = None,
                 train_annotation: str | None = None, answer_list: str | None = None, video_root: str | None = None,
                 **kwargs: Any) -> None:
        test, val, train, answers = QA_PRESETS[self.preset]
        anno = Path(data_root) / anno_dir

        def given(path: str | None) -> str | None:
            return under_root(data_root, path)

        super().__init__(
            test_annotation=given(test_annotation) or str(anno / f"{test}.json"),
            val_annotation=given(val_annotation) or (str(anno / f"{val}.json") if val else None),
            train_annotation=given(train_annotation) or str(anno / f"{train}.json"),
            answer_list=given(answer_list) or str(anno / f"{answers}.json"),
            video_root=given(video_root) or str(Path(data_root) / video_dir), **kwargs)

    def describe_source(self) -> str:
        test, _, _, answers = QA_PRESETS[self.preset]
        return (f"{self.title}: put the videos under <data_root>/videos and the UMT / VINDLU files ({test}.json, "
                f"{answers}.json, ...) under <data_root>/anno_downstream")


class MSRVTTQADataModule(PresetQADataModule):
    preset, title = "msrvtt_qa", "MSRVTT-QA"


class MSVDQADataModule(PresetQADataModule):
    preset, title = "msvd_qa", "MSVD-QA"


class ActivityNetQADataModule(PresetQADataModule):
    preset, title = "anet_qa", "ActivityNet-QA"


# ---------------------------------------------------------------------- multiple choice
def read_mc_annotations(path: str | Path, num_options: int = 5) -> list[dict[str, Any]]:
    """MC entries: ``video`` string, ``caption`` a list of ``num_options`` strings, ``answer`` an int index."""
    out = []
    for i, raw in enumerate(_read_json_list(path)):
        if not isinstance(raw, dict) or not {"video", "caption", "answer"} <= set(raw):
            raise AnnotationError(f"{path}: entry {i} needs 'video', 'caption' and 'answer' keys")
        caps = raw["caption"]
        if not (isinstance(caps, list) and len(caps) == num_options and all(isinstance(c, str) for c in caps)):
            raise AnnotationError(f"{path}: entry {i} key 'caption' must be a list of {num_options} strings")
        if not (isinstance(raw["answer"], int) and 0 <= raw["answer"] < num_options):
            raise AnnotationError(f"{path}: entry {i} key 'answer' must be an int in [0, {num_options}), "
                                  f"got {raw['answer']!r:.40}")
        out.append(raw)
    return out


class MCDataset(ClipDataset):
    """Entry i: {"video", "captions" (cleaned), "index", "answer"} (None when its video is skipped)."""

    def __init__(self, videos: list[str], anns: list[dict], decoder: VideoDecoder, transform: Transform) -> None:
        super().__init__(videos, decoder, transform, False)
        self.anns = anns

    def __getitem__(self, i: int) -> dict | None:
        video = self.load(i)
        if video is None:
            return None
        return {"video": video, "captions": [clean_caption(c) for c in self.anns[i]["caption"]], "index": i,
                "answer": self.anns[i]["answer"]}


class MultipleChoiceDataModule(VideoDataModule):
    """Video multiple choice (MSRVTT-MC layout): evaluation only.

    Args: test_annotation (MC JSON), video_root, tokenizer / tokenizer_flavor, max_txt_len (official 32),
    num_options (5), num_frames / img_size / sample_test, eval_batch_size, num_workers, skip_errors, on_corrupt,
    allow_absolute_paths, allow_images (as the retrieval DataModule).
    """

    def __init__(self, test_annotation: str, video_root: str, tokenizer: str = "bert-base-uncased",
                 tokenizer_flavor: str = "umt", max_txt_len: int = 32, num_options: int = 5, num_frames: int = 12,
                 img_size: int = 224, sample_test: str = "middle", eval_batch_size: int = 32, num_workers: int = 4,
                 skip_errors: bool = False, on_corrupt: OnCorrupt = "error", allow_absolute_paths: bool = False,
                 allow_images: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(init_args(locals()))
        self._anns: list[dict] | None = None

    train_dataloader = pl.LightningDataModule.train_dataloader  # evaluation only: no training loader

    def describe_source(self) -> str:
        return "point video_root / test_annotation at your copy of the data"

    def annotation(self, stage: str) -> str | None:
        """Every stage reads the test annotation."""
        return self.hparams.test_annotation

    def check_stage(self, stage: str) -> None:
        """Malformed entries and paths outside video_root: one line now, before any decoding."""
        self.videos(stage)

    def videos(self, stage: str) -> list[str]:
        h = self.hparams
        return video_paths(self.eval_annotations(), h.video_root, str(h.test_annotation), h.allow_absolute_paths)

    def eval_annotations(self, stage: str | None = None) -> list[dict]:
        if self._anns is None:
            self._anns = read_mc_annotations(self.hparams.test_annotation, self.hparams.num_options)
        return self._anns

    def collate(self, items: list[dict | None]) -> dict | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        k = self.hparams.num_options
        t = self.tokenizer([c for it in items for c in it["captions"]], max_length=self.hparams.max_txt_len)
        return {"video": torch.stack([it["video"] for it in items]),
                "input_ids": t["input_ids"].view(len(items), k, -1),
                "attention_mask": t["attention_mask"].view(len(items), k, -1),
                "answer": torch.tensor([it["answer"] for it in items]),
                "index": torch.tensor([it["index"] for it in items])}

    def dataset(self, stage: str) -> MCDataset:
        return MCDataset(self.videos(stage), self.eval_annotations(), self.clip_decoder(False), self.transform(False))


class MSRVTTMCDataModule(MultipleChoiceDataModule):
    """MSRVTT-MC: <data_root>/<anno_dir>/msrvtt_mc_test.json, videos under <data_root>/<video_dir>."""

    def __init__(self, data_root: str, anno_dir: str = "anno_downstream", video_dir: str = "videos",
                 test_annotation: str | None = None, video_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(test_annotation=under_root(data_root, test_annotation)
                         or str(Path(data_root) / anno_dir / "msrvtt_mc_test.json"),
                         video_root=under_root(data_root, video_root) or str(Path(data_root) / video_dir), **kwargs)

    def describe_source(self) -> str:
        return ("MSRVTT-MC: put the videos under <data_root>/videos and msrvtt_mc_test.json (UMT / VINDLU release) "
                "under <data_root>/anno_downstream")
