"""Action recognition with VideoMAE's protocol, in Lightning: multi-view testing and fine-tuning with merging.

Evaluation (VideoMAE ``engine_for_finetuning.final_test`` + ``merge``): every (video, view) pair of the split is one
item; per view the softmax of the logits; the per-view probabilities of every process are gathered, de-duplicated by
(video, view) (DistributedSampler repeats samples to even out the shards) and sorted, then each video's score is the
mean of its views' softmax vectors and top-1 / top-5 follow. The result does not depend on the number of processes.

Fine-tuning (VideoMAE ``run_class_finetuning.py``): cross-entropy with label smoothing, or soft-target
cross-entropy under Mixup / CutMix; AdamW with layer-wise lr decay, no weight decay on biases / norms / positions;
per-step linear warm-up and cosine to ``lr * min_lr_ratio``. Merging (the TokenMerging callback) stays on while
training. Resume is exact as RetrievalTask's: per-step seeds for dropout / drop-path / mixup draws, the lr schedule's
length read on the first step, the data position from the trainer's progress (the DataModule's sampler).

YAML::

    model:
      class_path: vidtldr_pl.tasks.ClassificationTask
      init_args: {model: videomae_b16, checkpoint: ckpt.pth, model_overrides: {num_classes: 400}}
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy

from ..merging import find_mergeable
from ..preflight import checkpoint_hint
from .distributed import all_gather_cat, gather_by_index
from .mixup import apply_mix, draw_mix, mix_targets, soft_target_cross_entropy
from .base import VideoTask
from .optim import layer_decay_groups, warmup_cosine_floor

log = logging.getLogger(__name__)


@runtime_checkable
class ClassificationEvalData(Protocol):
    """What the datamodule provides for the evaluation: ``num_views(stage)`` and ``num_videos(stage)`` ("validate" /
    "test"); its evaluation loader yields every (video_index, view_index) pair of ``range(num_videos) x
    range(num_views)`` (any order, repeats allowed: they are removed) with ``label``."""

    def num_views(self, stage: str) -> int: ...

    def num_videos(self, stage: str) -> int: ...


@runtime_checkable
class PooledClassifier(Protocol):
    """A classifier that also gives the pooled features its head reads (for the loyalty feature cosine)."""

    def forward_pooled(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, 3, T, H, W) -> (logits (B, C), pooled features (B, D))."""


@runtime_checkable
class LabelledData(Protocol):
    """A datamodule that knows its number of classes (checked against the model's outputs)."""

    @property
    def num_classes(self) -> int: ...


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Top-k accuracy in % of scores (N, C) against labels (N,) (torchmetrics, micro average)."""
    k = min(k, scores.shape[1])
    return 100.0 * float(multiclass_accuracy(scores, labels, num_classes=scores.shape[1], top_k=k, average="micro"))


def video_scores(key: Tensor, probs: Tensor, labels: Tensor, num_views: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-video mean of the per-view softmax vectors.

    key: (M,) unique, increasing ``video * num_views + view``; probs: (M, C); labels: (M,).
    Returns (video ids (N,), scores (N, C) float64, labels (N,)) for the videos with all their views; a video with
    only some of its views, or with different labels across its views, raises.
    """
    videos, counts = torch.unique_consecutive(key // num_views, return_counts=True)
    partial = videos[counts != num_views]
    if partial.numel():
        raise ValueError(f"video {int(partial[0])} has {int(counts[counts != num_views][0])} of its {num_views} views "
                         "(every view of a video must be evaluated)")
    n, c = videos.numel(), probs.shape[1]
    probs, labels = probs.view(n, num_views, c), labels.view(n, num_views)
    if not bool((labels == labels[:, :1]).all()):
        bad = int(videos[(labels != labels[:, :1]).any(1)][0])
        raise ValueError(f"video {bad} has different labels across its views")
    scores = torch.zeros(n, c, dtype=torch.float64)
    for v in range(num_views):  # a fixed order of summation: the same on any number of processes
        scores += probs[:, v].double()
    return videos, scores / num_views, labels[:, 0]


class ClassificationTask(VideoTask):
    """Video classification: multi-view evaluation (top-1 / top-5) and fine-tuning.

    Args:
        model: a registered model name (``list_models(task="classification")``: videomae_b16, videomae_l16,
            videomae_tiny) or a model object: ``model(video (B, 3, T, H, W)) -> logits (B, C)`` with a mergeable
            encoder (``find_mergeable``) for merging, layer-wise decay and the measurements.
        checkpoint: a checkpoint file (.pth / .safetensors, original / HF / our layout) or ``builtin:<weights>``.
        model_overrides: config fields of the named model (num_classes, drop_path_rate, fc_drop, size_weighted_pool,
            num_frames, img_size, attention, ...).
        label_smoothing: of the cross-entropy (and of the Mixup targets), VideoMAE 0.1.
        mixup_alpha / cutmix_alpha / mixup_prob / mixup_switch_prob: Mixup / CutMix (VideoMAE 0.8 / 1.0 / 1.0 / 0.5;
            0 disables).
        lr: peak learning rate (VideoMAE scales its ``--lr`` by total batch / 256: the configs hold the scaled value).
        weight_decay / betas: AdamW (VideoMAE 0.05, (0.9, 0.999)).
        layer_decay: layer-wise lr decay (VideoMAE 0.75 for B and L; 1 disables).
        warmup_epochs / min_lr_ratio: per-step linear warm-up, then cosine to ``lr * min_lr_ratio``.
        seed: per-step seeds of dropout / drop-path and the Mixup draws (a resumed run draws the same).
        gradient_checkpointing: recompute the encoder blocks in the backward pass.
        save_best / save_every_n_steps: training checkpoints: the best by validation top-1 plus ``last.ckpt``; the
            latest two every N optimizer steps.
        gather_chunk: rows per process per collective when gathering the per-view probabilities.

    After an evaluation epoch ``self.results`` holds ``top1`` / ``top5`` (%), ``num_videos``, ``num_views`` (per
    video), and ``num_skipped`` when the datamodule dropped unreadable videos (``skip_errors``); the EncoderStats
    callback adds ``tokens_per_layer``, ``videos_per_s`` (encoder inputs, i.e. views, per second) and ``gflops`` (per
    view). ``self.scores`` holds the per-video scores (N, C), ``self.labels`` and ``self.video_ids``, and
    ``self.pooled`` the per-view pooled features (N, V, D) float32 of a ``PooledClassifier`` (else None): the last
    evaluation's, replaced by the next one (``loyalty_outputs()``).
    """

    checkpoint_monitor = "top1"
    checkpoint_filename = "best-epoch{epoch}-top1_{top1:.2f}"
    lr_schedule = staticmethod(warmup_cosine_floor)

    def __init__(
        self,
        model: str | nn.Module = "videomae_b16",
        checkpoint: str | None = None,
        model_overrides: dict | None = None,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float = 0.75,
        warmup_epochs: float = 5.0,
        min_lr_ratio: float = 0.001,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        save_best: bool = True,
        save_every_n_steps: int | None = None,
        gather_chunk: int = 4096,
    ) -> None:
        if isinstance(model, str):
            _check_checkpoint_file(model, checkpoint)
        super().__init__(model, checkpoint, model_overrides, gradient_checkpointing)
        self._reset()

    # ------------------------------------------------------------------ forward
    def forward(self, video: Tensor) -> Tensor:
        """video: (B, T, 3, H, W) as the DataModules give it -> logits (B, C)."""
        return self.model(video.permute(0, 2, 1, 3, 4))

    # ------------------------------------------------------------------ evaluation
    def _reset(self) -> None:
        self._keys: list[Tensor] = []
        self._probs: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._pooled: list[Tensor] = []
        self._num_classes: int | None = None

    def _eval_step(self, batch: dict[str, Tensor] | None) -> None:
        if batch is None:  # every sample of the batch was an unreadable video (skip_errors)
            return
        if isinstance(self.model, PooledClassifier):
            logits, pooled = self.model.forward_pooled(batch["video"].permute(0, 2, 1, 3, 4))
            self._pooled.append(pooled.detach().float().cpu())
        else:
            logits = self(batch["video"])
        if self._num_classes is None:
            expected = self._expected_classes()
            if expected is not None and logits.shape[-1] != expected:
                raise ValueError(f"the model outputs {logits.shape[-1]} classes, the data has {expected} "
                                 "(set model_overrides: {num_classes: ...} or load the matching checkpoint)")
            self._num_classes = logits.shape[-1]
        self._keys.append(torch.stack([batch["video_index"].long(), batch["view_index"].long()], 1).cpu())
        self._probs.append(logits.detach().float().softmax(-1).cpu())
        self._labels.append(batch["label"].long().cpu())

    def _expected_classes(self) -> int | None:
        dm = self.trainer.datamodule
        n = dm.num_classes if isinstance(dm, LabelledData) else None
        return int(n) if isinstance(n, int) else None

    def _view_counts(self, pairs: Tensor) -> tuple[int, int | None]:
        """(views per video, videos in the split or None) from the datamodule; without one, the views from the pairs
        every process saw."""
        dm = self.trainer.datamodule
        if isinstance(dm, ClassificationEvalData):
            stage = self._stage()
            return int(dm.num_views(stage)), int(dm.num_videos(stage))
        seen = all_gather_cat(pairs[:, 1])
        return (int(seen.max()) + 1 if seen.numel() else 1), None

    @torch.no_grad()
    def _eval_end(self) -> None:
        num_classes = self._num_classes or self._expected_classes() or 0
        pooled = torch.cat(self._pooled) if self._pooled else None
        if self._keys:
            pairs, probs, labels = torch.cat(self._keys), torch.cat(self._probs), torch.cat(self._labels)
        else:  # a process without samples still takes part in the collectives
            pairs = torch.zeros(0, 2, dtype=torch.long)
            probs, labels = torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.long)
        num_views, num_videos = self._view_counts(pairs)
        if pairs.numel() and int(pairs[:, 1].max()) >= num_views:
            raise ValueError(f"view_index {int(pairs[:, 1].max())} >= the {num_views} views per video of the datamodule")
        key = pairs[:, 0] * num_views + pairs[:, 1]
        if isinstance(self.model, PooledClassifier):  # every process gathers them (a rank without samples too)
            pooled = pooled if pooled is not None else torch.zeros(0, 0)
            key, probs, labels, pooled = gather_by_index(key, probs, labels, pooled, chunk=self.hparams.gather_chunk)
        else:
            key, probs, labels = gather_by_index(key, probs, labels, chunk=self.hparams.gather_chunk)
        videos, scores, video_labels = video_scores(key, probs, labels, num_views)
        skipped = 0
        if num_videos is not None and videos.numel() != num_videos:
            skipped = num_videos - videos.numel()
            missing = sorted(set(range(num_videos)) - set(videos.tolist()))[:10]
            if not self._skips_errors():
                raise ValueError(f"evaluation saw {videos.numel()} of {num_videos} videos; missing e.g. {missing} (the "
                                 "protocol needs every video: no limit_val_batches / limit_test_batches)")
            log.warning("%d of %d videos were unreadable and skipped (skip_errors), e.g. %s", skipped, num_videos, missing)
        if videos.numel() == 0:
            raise ValueError("evaluation saw no video")
        results: dict[str, Any] = {"top1": topk_accuracy(scores, video_labels, 1),
                                   "top5": topk_accuracy(scores, video_labels, 5)}
        for k, v in results.items():  # identical on every process; max keeps Lightning's sync exact
            self.log(k, v, sync_dist=True, reduce_fx="max")
        results.update(num_videos=int(videos.numel()), num_views=num_views)
        if skipped:
            results["num_skipped"] = skipped
        self.results = results
        self.scores, self.labels, self.video_ids = scores, video_labels, videos
        self.pooled = pooled.view(videos.numel(), num_views, -1) if pooled is not None else None
        self._reset()

    def loyalty_outputs(self) -> dict[str, Tensor] | None:
        """The last evaluation's per-video outputs for ``metrics.loyalty``: ``probs`` (N, C) float64, ``video_ids``
        (N,) and, for a ``PooledClassifier``, ``features`` (N, V, D); None before any evaluation."""
        if getattr(self, "scores", None) is None:
            return None
        out = {"probs": self.scores, "video_ids": self.video_ids}
        if getattr(self, "pooled", None) is not None:
            out["features"] = self.pooled
        return out

    # ------------------------------------------------------------------ training
    def _mixing(self) -> bool:
        h = self.hparams
        return (h.mixup_alpha > 0 or h.cutmix_alpha > 0) and h.mixup_prob > 0

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy with label smoothing, or soft-target cross-entropy on a Mixup / CutMix batch."""
        video, label = batch["video"], batch["label"].long()
        h = self.hparams
        if self._mixing():
            rng = np.random.default_rng(self._step_seed(batch_idx) + 1)
            draw = draw_mix(video.shape[-2], video.shape[-1], h.mixup_alpha, h.cutmix_alpha, h.mixup_prob,
                            h.mixup_switch_prob, rng)
            logits = self(apply_mix(video, draw))
            loss = soft_target_cross_entropy(logits, mix_targets(label, logits.shape[-1], draw.lam, h.label_smoothing))
        else:
            logits = self(video)
            loss = F.cross_entropy(logits.float(), label, label_smoothing=h.label_smoothing)
            self.log("train/acc", (logits.argmax(-1) == label).float().mean() * 100, batch_size=video.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=video.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over layer-wise decayed groups; per-step warm-up + cosine (VideoMAE's schedule)."""
        h = self.hparams
        encoders = find_mergeable(self.model)
        if not encoders:
            raise ValueError("layer-wise lr decay needs the model's ViT encoder (a mergeable encoder with blocks); "
                             f"{type(self.model).__name__} has none")
        groups = layer_decay_groups(self, encoders[0], h.weight_decay, h.layer_decay)
        for group in groups:
            group["lr"] = h.lr * group["lr_scale"]
        return self._scheduled(torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas)))


def _check_checkpoint_file(model: str, checkpoint: str | None) -> None:
    """A missing checkpoint file: one line naming it, with where such files come from."""
    if checkpoint is None or checkpoint.startswith("builtin:") or Path(checkpoint).is_file():
        return
    raise FileNotFoundError(f"checkpoint file not found: {checkpoint} ({checkpoint_hint(model)})")


__all__ = ["ClassificationEvalData", "ClassificationTask", "LabelledData", "PooledClassifier", "topk_accuracy",
           "video_scores"]
