"""Measure the merged encoders during evaluation: tokens per block, videos/s and GFLOPs per video.

Forward hooks on every mergeable encoder of the LightningModule time each call (synchronising CUDA; an encoder's
first call in the process is left out as warm-up, so that the second and later rows of a comparison are timed from
their first batch), count videos, read the tokens after each block from the call's MergeState, and
count FLOPs once per epoch on the meta device for the input shape seen. After the epoch the numbers are in
``self.results`` and, when the module keeps a ``results`` dict (the tasks do), added to it.
"""
from __future__ import annotations

import time
import weakref
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..flops import encoder_flops
from ..merging import MergeState, find_mergeable


NOT_TIMED = "n/a (one batch)"  # shown for videos/s when the only batch timed was the warm-up
_WARMED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # encoders whose warm-up call this process has made


class _EncoderMeter:
    """Timing and token counts of one encoder over an epoch."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.calls = 0
        self.videos = 0
        self.seconds = 0.0
        self.tokens_per_layer: list[int] | None = None
        self.input_shape: tuple[int, ...] | None = None
        self._t0 = 0.0

    @staticmethod
    def _sync(x: Tensor) -> None:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        video = args[0] if args else kwargs.get("video")
        if isinstance(video, Tensor):
            self._sync(video)
            self.input_shape = tuple(video.shape)
        self._t0 = time.perf_counter()

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, Tensor):
            self._sync(out)
        elapsed = time.perf_counter() - self._t0
        state = args[1] if len(args) > 1 else kwargs.get("state")
        if self.calls == 0:
            if isinstance(state, MergeState) and state.tokens_per_layer:
                self.tokens_per_layer = list(state.tokens_per_layer)
            elif isinstance(out, Tensor):
                self.tokens_per_layer = [out.shape[1]]
        if self.encoder in _WARMED:
            if self.input_shape is not None:
                self.seconds += elapsed
                self.videos += self.input_shape[0]
        else:
            _WARMED.add(self.encoder)
        self.calls += 1


class EncoderStats(Callback):
    """Tokens per block, videos/s and GFLOPs of the mergeable encoders during validation / test.

    Args:
        flops: also count GFLOPs per video (meta device, instant).
        target: attribute path of the module to measure (default: the whole LightningModule).

    ``results`` after an epoch: ``tokens_per_layer`` (first encoder, first batch), ``videos_per_s`` (first encoder,
    this process, its first call in the process excluded as warm-up; None when nothing else was timed: shown
    as ``NOT_TIMED``), ``gflops`` / ``merge_gmacs`` (per video).
    """

    def __init__(self, flops: bool = True, target: str | None = None) -> None:
        super().__init__()
        self.flops = flops
        self.target = target
        self.results: dict[str, Any] = {}
        self._meters: list[_EncoderMeter] = []
        self._handles: list[RemovableHandle] = []

    def _start(self, pl_module: pl.LightningModule) -> None:
        self._stop()
        for encoder in find_mergeable(pl_module.get_submodule(self.target or "")):
            meter = _EncoderMeter(encoder)
            self._meters.append(meter)
            self._handles.append(encoder.register_forward_pre_hook(meter.pre, with_kwargs=True))
            self._handles.append(encoder.register_forward_hook(meter.post, with_kwargs=True))

    def _stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._meters = [], []

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        meters = self._meters
        self._stop()
        if trainer.sanity_checking or not meters or meters[0].calls == 0:
            return
        meter = meters[0]
        results: dict[str, Any] = {
            "tokens_per_layer": meter.tokens_per_layer,
            "videos_per_s": meter.videos / meter.seconds if meter.seconds > 0 else None,
        }
        if self.flops and meter.input_shape is not None:
            report = encoder_flops(meter.encoder, meter.input_shape)
            results.update(gflops=report.gflops, merge_gmacs=report.merge_gmacs)
        self.results = results
        target = getattr(pl_module, "results", None)
        if isinstance(target, dict):
            target.update(results)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)


__all__ = ["EncoderStats"]
