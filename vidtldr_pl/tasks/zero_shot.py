"""Zero-shot video classification with a dual encoder (ViFi-CLIP): class-name prompts against video embeddings.

The class prompts ("a photo of a {class}." by default) are encoded once per class list (at the start of an
evaluation epoch, from ``class_names`` or the DataModule's ``class_names``) and kept in the model; each view's
logits are exp(logit_scale) x cosine(video, prompt); scoring is ClassificationTask's (softmax per view, gathered
across processes before scoring, mean over a video's views, top-1 / top-5), so the result does not depend on the
number of processes. ``evaluate_splits`` runs one evaluation per split (UCF101 / HMDB51: the 3 official splits;
K600: the 3 novel-class splits) and reports each split and their mean, as ViFi-CLIP's zero-shot tables do.

Protocol (ViFi-CLIP ``configs/zero_shot/eval``): 32 frames, one per segment at the segment middle (TSN test mode),
one view (1 clip x 1 crop), ImageNet mean / std. With the classification DataModules that is the "validate" stage
with ``protocol: segment, num_frames: 32, val_views: single`` (the configs set ``split: validate``); their test
stage's single segment view would be the segment starts. Spatially the DataModules resize the short side to
``img_size`` and centre-crop ``img_size`` (ViFi-CLIP: short side 256, crop 224).

YAML::

    model:
      class_path: vidtldr_pl.tasks.ZeroShotClassificationTask
      init_args: {model: vificlip_b16, checkpoint: vificlip_k400_32f.safetensors,
                  model_overrides: {clip_checkpoint: ViT-B-16.pt}}
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from torch import nn

from ..backbones.interfaces import ZeroShotClassifier
from .classification import ClassificationTask

PROMPT_TEMPLATE = "a photo of a {}."


@runtime_checkable
class NamedClassData(Protocol):
    """A datamodule that names its classes (the prompts' default class names)."""

    @property
    def class_names(self) -> list[str]: ...


class ZeroShotClassificationTask(ClassificationTask):
    """Evaluation-only classification by class-name prompts.

    Args:
        model: a registered dual encoder (``vificlip_b16``, ``vificlip_tiny``) or a ``ZeroShotClassifier``
            (``vidtldr_pl.backbones.interfaces``: ``set_class_names(names, template)``, ``class_names`` and
            ``forward(video (B, 3, T, H, W)) -> logits (B, K)``).
        checkpoint / model_overrides: as ClassificationTask (``clip_checkpoint`` names the CLIP file the token
            embedding comes from when the checkpoint is a ViFi-CLIP file).
        class_names: the class names, or a file of them (one per line, or a CSV whose last column is the name, e.g.
            ViFi-CLIP's ``labels/*.csv`` with an ``id,name`` header); default: the DataModule's ``class_names``.
            "_" reads as a space.
        prompt_template: the prompt, ``{}`` the class name (ViFi-CLIP: "a photo of a {}.").
        gather_chunk: rows per process per collective when gathering the per-view probabilities.
    """

    # saved as "prompt_class_names": the classification DataModules have a class_names hparam too, and Lightning
    # refuses to log two different values under one key
    hparams_ignore = ("class_names", "prompt_template")

    def __init__(self, model: str | nn.Module = "vificlip_b16", checkpoint: str | None = None,
                 model_overrides: dict | None = None, class_names: list[str] | str | None = None,
                 prompt_template: str = PROMPT_TEMPLATE, gather_chunk: int = 4096) -> None:
        if "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain {{}} for the class name, got {prompt_template!r}")
        super().__init__(model=model, checkpoint=checkpoint, model_overrides=model_overrides, gather_chunk=gather_chunk)
        if not isinstance(self.model, ZeroShotClassifier):
            raise ValueError(f"{type(self.model).__name__} is not a ZeroShotClassifier (set_class_names, class_names): "
                             "zero-shot needs a dual encoder")
        self.save_hyperparameters({"prompt_class_names": class_names, "prompt_template": prompt_template})
        self._file_names = read_class_name_file(class_names) if isinstance(class_names, str) else None

    def class_names(self) -> list[str]:
        names = self._file_names if self._file_names is not None else self.hparams.prompt_class_names
        if names is None:
            dm = self.trainer.datamodule
            names = dm.class_names if isinstance(dm, NamedClassData) else None
        if not names:
            raise ValueError("zero-shot classification needs class names: set class_names or use a DataModule that "
                             "has them")
        return list(names)

    def _encode_prompts(self) -> None:
        names = self.class_names()
        if self.model.class_names != names:
            self.model.set_class_names(names, self.hparams.prompt_template)

    def _eval_start(self, stage: str) -> None:
        super()._eval_start(stage)
        self._encode_prompts()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("ZeroShotClassificationTask evaluates only (fine-tune the dual encoder elsewhere)")


def read_class_name_file(path: str) -> list[str]:
    """One name per line, or a CSV (``.csv``) whose last column is the name; a header row (first column not an
    integer id) is skipped."""
    import csv
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"class_names file not found: {path}")
    if file.suffix.lower() != ".csv":
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]
    rows = [r for r in csv.reader(file.read_text().splitlines()) if r]
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no class names")
    return [r[-1].strip() for r in rows]


def evaluate_splits(task: ZeroShotClassificationTask, datamodules: Mapping[str, pl.LightningDataModule],
                    make_trainer: Callable[[], pl.Trainer], stage: str = "validate") -> dict[str, Any]:
    """Evaluate ``task`` on each split's DataModule (a fresh trainer each) -> {"splits": {name: results}, "top1" /
    "top5": the mean over the splits, "num_splits"}.

    stage: "validate" (default: with ``val_views: single`` the classification DataModules give the one TSN view,
    the segment middles and a centre crop, which is ViFi-CLIP's zero-shot view) or "test" (the DataModule's test
    views; with the segment protocol its single temporal view is the segment STARTS)."""
    if not datamodules:
        raise ValueError("evaluate_splits needs at least one split")
    if stage not in ("validate", "test"):
        raise ValueError(f"stage must be 'validate' or 'test', got {stage!r}")
    per_split: dict[str, dict[str, Any]] = {}
    for name, dm in datamodules.items():
        trainer = make_trainer()
        run = trainer.validate if stage == "validate" else trainer.test
        run(task, datamodule=dm, verbose=False)
        per_split[name] = dict(task.results)
    mean = {k: sum(r[k] for r in per_split.values()) / len(per_split) for k in ("top1", "top5")}
    return {"splits": per_split, **mean, "num_splits": len(per_split)}


__all__ = ["NamedClassData", "PROMPT_TEMPLATE", "ZeroShotClassificationTask", "evaluate_splits", "read_class_name_file"]
