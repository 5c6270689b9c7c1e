"""What every task shares: the model (built once from a name or given), per-step seeding for exact resume, the
per-step LR schedule, the callbacks it needs and the Lightning evaluation hooks.

A task subclasses ``VideoTask``, calls ``super().__init__(model, checkpoint, model_overrides, ...)`` first (the base
builds ``self.model`` and saves the subclass's arguments as hparams), keeps ``seed``, ``warmup_epochs``,
``min_lr_ratio``, ``save_best`` (and optionally ``save_every_n_steps``) among them, sets ``checkpoint_monitor`` /
``checkpoint_filename`` and, if its reference uses another schedule formula, ``lr_schedule``. Its evaluation defines
``_reset()``, ``_eval_step(batch)``, ``_eval_end()`` and, when an epoch needs more than a reset to start,
``_eval_start(stage)``; the base's Lightning hooks call them (a sanity-check epoch only resets: every protocol needs
every sample).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import lightning.pytorch as pl
import torch
from torch import nn

from ..backbones import create_model
from ..backbones.interfaces import VideoEncoder
from ..merging import find_mergeable
from .distributed import rank_and_world
from .optim import warmup_cosine

D = TypeVar("D")


@runtime_checkable
class SkipsErrors(Protocol):
    """A datamodule that can drop unreadable videos: with ``skip_errors`` the evaluation scores those that remain."""

    @property
    def skip_errors(self) -> bool: ...


class VideoTask(pl.LightningModule):
    """LightningModule base of the tasks (no tensor tricks: plumbing only).

    Args:
        model: a registered model name (``create_model(model, checkpoint=..., **model_overrides)``) or a model object.
        checkpoint: checkpoint file (.pth / .safetensors) or ``builtin:<weights>``, for a model name only.
        model_overrides: config fields of the named model (num_frames, drop_path_rate, ...), for a model name only.
        gradient_checkpointing: recompute the mergeable encoders' attention / MLP in the backward pass (merging stays
            outside the recomputed parts); None leaves the encoders as they are (a task without the option).

    ``self.results`` holds what the last evaluation epoch measured (the task's metrics plus ``EncoderStats``').
    """

    checkpoint_monitor: str | None = None  # metric of the "best" checkpoint, e.g. "top1"
    checkpoint_filename: str = "best-epoch{epoch}"
    lr_schedule: Callable[[int, int, int, float], float] = staticmethod(warmup_cosine)
    # __init__ arguments kept out of the saved hyperparameters (save_hyperparameters reads every subclass's frame);
    # a subclass saves them under its own names
    hparams_ignore: tuple[str, ...] = ()
    # the options that only a model name takes (the error for a model object names them)
    name_only_options: str = "checkpoint / model_overrides"

    _schedule: tuple[int, int] | None = None  # (warm-up steps, total steps), known once training runs

    def __init__(self, model: str | nn.Module, checkpoint: str | None = None, model_overrides: dict | None = None,
                 gradient_checkpointing: bool | None = None) -> None:
        super().__init__()
        # the hparams are the arguments of the subclasses' __init__ (the caller's frame and those above it)
        self.save_hyperparameters(ignore=[*self.hparams_ignore, *(["model"] if isinstance(model, nn.Module) else [])],
                                  frame=inspect.currentframe().f_back)
        if isinstance(model, nn.Module):
            if checkpoint is not None or model_overrides:
                raise ValueError(f"{self.name_only_options} apply to a model name; load a model object yourself")
            self.model = model
        else:
            self.model = create_model(model, checkpoint=checkpoint, **(model_overrides or {}))
        if gradient_checkpointing is not None:
            for encoder in find_mergeable(self.model):
                if isinstance(encoder, VideoEncoder):
                    encoder.set_grad_checkpointing(gradient_checkpointing)
        self.results: dict[str, Any] = {}

    # ------------------------------------------------------------------ the datamodule
    def _datamodule(self, protocol: type[D], members: str) -> D:
        """The trainer's datamodule as ``protocol`` (a runtime-checkable Protocol); a TypeError naming ``members``
        when it does not implement it."""
        dm = self.trainer.datamodule
        if dm is None or not isinstance(dm, protocol):
            raise TypeError(f"{type(self).__name__} needs a datamodule implementing {protocol.__name__} ({members}); "
                            f"got {type(dm).__name__}")
        return dm

    def _skips_errors(self) -> bool:
        """Whether the datamodule drops unreadable videos (``skip_errors``) instead of failing."""
        dm = self.trainer.datamodule
        return isinstance(dm, SkipsErrors) and bool(dm.skip_errors)

    def _stage(self) -> str:
        """The evaluation running: "test" or "validate" (also the validation of a fit)."""
        return "test" if self.trainer.testing else "validate"

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

    # ------------------------------------------------------------------ evaluation (what each task defines)
    def _reset(self) -> None:
        """Forget what the evaluation epoch collected."""
        raise NotImplementedError

    def _eval_start(self, stage: str) -> None:
        """Start an evaluation epoch of ``stage`` ("validate" / "test"): by default, forget the last one."""
        self._reset()

    def _eval_step(self, batch: Any) -> None:
        """Collect what one evaluation batch gives."""
        raise NotImplementedError

    def _eval_end(self) -> None:
        """Score the epoch into ``self.results`` (and log it)."""
        raise NotImplementedError

    def _end_epoch(self) -> None:
        if self.trainer.sanity_checking:  # a few batches only: the protocols need every sample
            self._reset()
            return
        self._eval_end()

    # ------------------------------------------------------------------ Lightning hooks
    def on_validation_epoch_start(self) -> None:
        self._eval_start("validate")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_epoch()

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_epoch()


__all__ = ["SkipsErrors", "VideoTask"]
