"""What every task shares: per-step seeding for exact resume, the per-step LR schedule, the callbacks it needs.

A task subclasses ``VideoTask``, keeps ``seed``, ``warmup_epochs``, ``min_lr_ratio``, ``save_best`` (and optionally
``save_every_n_steps``) in its hparams, sets ``checkpoint_monitor`` / ``checkpoint_filename`` and, if its reference
uses another schedule formula, ``lr_schedule``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from .distributed import rank_and_world
from .optim import warmup_cosine


_ALIAS_WARNED: set[str] = set()


def model_options(model_overrides: dict | None, vision_overrides: dict | None = None) -> dict:
    """A task's options for the named model (``create_model(name, **options)``). ``model_overrides`` is their one
    name in every task; ``vision_overrides``, the old name of the retrieval / QA / MC tasks, still works and warns
    once per process."""
    if vision_overrides:
        if model_overrides:
            raise ValueError("give the model options once, as model_overrides (vision_overrides is its old name)")
        if "vision_overrides" not in _ALIAS_WARNED:
            _ALIAS_WARNED.add("vision_overrides")
            warnings.warn("vision_overrides is now model_overrides (the same option in every task); the old name "
                          "still works", FutureWarning, stacklevel=3)
        return dict(vision_overrides)
    return dict(model_overrides or {})


class VideoTask(pl.LightningModule):
    """LightningModule base of the tasks (no tensor tricks: plumbing only)."""

    checkpoint_monitor: str | None = None  # metric of the "best" checkpoint, e.g. "top1"
    checkpoint_filename: str = "best-epoch{epoch}"
    lr_schedule: Callable[[int, int, int, float], float] = staticmethod(warmup_cosine)

    _schedule: tuple[int, int] | None = None  # (warm-up steps, total steps), known once training runs

    # ------------------------------------------------------------------ exact resume
    def _step_seed(self, batch_idx: int) -> int:
        """A seed fixed by (seed, optimizer step, micro-batch, process): what a resumed run draws again."""
        rank, world = rank_and_world()
        micro = batch_idx % max(1, self.trainer.accumulate_grad_batches)
        return ((self.hparams.seed * 1_000_003 + self.global_step) * 64 + micro) * max(world, 1) * 2 + rank * 2

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout / drop-path draws per step, independent of what ran before (exact resume)
        torch.manual_seed(self._step_seed(batch_idx) % 2**63)

    # ------------------------------------------------------------------ schedule
    def _lr_factor(self, step: int) -> float:
        """The warm-up + cosine multiplier at optimizer step ``step``.

        The run's length is read on the first step after 0, not when the optimizer is built: asking the trainer for
        ``estimated_stepping_batches`` there would build the training loader before a resumed run's progress is
        restored, and the resumed epoch would start from the wrong data position. Step 0 needs no length (0 with a
        warm-up, 1 without)."""
        if step == 0:
            return 0.0 if self.hparams.warmup_epochs > 0 else 1.0
        if self._schedule is None:
            total = int(self.trainer.estimated_stepping_batches)
            epochs = max(1, self.trainer.max_epochs or 1)
            self._schedule = (round(self.hparams.warmup_epochs * total / epochs), total)
        warmup, total = self._schedule
        return type(self).lr_schedule(step, warmup, total, self.hparams.min_lr_ratio)

    def _scheduled(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer with the per-step schedule, as configure_optimizers returns it."""
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ callbacks
    def configure_callbacks(self) -> list[pl.Callback]:
        """``EncoderStats`` (unless the trainer has one) and, when fitting, the checkpoints of a fine-tuning run: the
        best by ``checkpoint_monitor`` plus ``last.ckpt`` (``save_best``) and the latest two every N steps
        (``save_every_n_steps``). Evaluation adds no checkpoint callback, so Lightning has nothing to override."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from ..callbacks.measure import EncoderStats

        callbacks: list[pl.Callback] = []
        trainer = self._trainer
        if trainer is None or not any(isinstance(cb, EncoderStats) for cb in trainer.callbacks):
            callbacks.append(EncoderStats())
        if trainer is None or trainer.state.fn != "fit":
            return callbacks
        if self.hparams.get("save_best") and self.checkpoint_monitor:
            callbacks.append(ModelCheckpoint(monitor=self.checkpoint_monitor, mode="max", save_last=True,
                                             filename=self.checkpoint_filename, auto_insert_metric_name=False))
        if self.hparams.get("save_every_n_steps"):
            callbacks.append(ModelCheckpoint(monitor="step", mode="max", save_top_k=2, filename="step{step}",
                                             every_n_train_steps=self.hparams.save_every_n_steps,
                                             auto_insert_metric_name=False))
        return callbacks


__all__ = ["VideoTask"]
