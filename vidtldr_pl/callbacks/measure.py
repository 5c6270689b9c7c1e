"""Measure the merged encoders during evaluation: tokens per block, videos/s and GFLOPs per video.

Forward hooks on every mergeable encoder of the LightningModule time each call (synchronising CUDA; an encoder's
first call in the process is left out as warm-up, so that the second and later rows of a comparison are timed from
their first batch), count videos, read the tokens after each block from the call's MergeState, and
count FLOPs once per epoch on the meta device for the input shape seen. After the epoch the numbers are in
``self.results`` and, when the module keeps a ``results`` dict (the tasks do), added to it.

A grafted encoder (a transformers / timm / open_clip model, ``vidtldr_pl.foreign``) is called with its library's
arguments, not ``(video, state)``: its first call's arguments are kept as meta tensors and replayed for the FLOPs
(``flops.call_flops``), its MergeState is read from ``encoder.last_merge_state`` (without merging: the tokens entering
its first block, at every block), and its calls count videos through the batch: a frame-wise tower's batch holds
T rows per video, so rows per video = the call's rows / the batch's videos (``batch["video"]``) at its first call.
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

from ..flops import call_flops, encoder_flops, meta_call, row_flops
from ..flops.input import content_dependent, entering_flops, video_entering
from ..merging import MergeState, find_mergeable


NOT_TIMED = "n/a (one batch)"  # shown for videos/s when the only batch timed was the warm-up
_WARMED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # encoders whose warm-up call this process has made


class _EncoderMeter:
    """Timing and token counts of one encoder over an epoch."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.foreign = hasattr(encoder, "foreign_family")  # grafted: called with its library's arguments
        self.calls = 0
        self.videos = 0.0
        self.seconds = 0.0
        self.tokens_per_layer: list[int] | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.call: tuple[tuple, dict] | None = None  # foreign: the first call's arguments, as meta tensors
        self.batch_videos: int | None = None  # videos of the batch being evaluated (set by EncoderStats)
        self.rows_per_video = 1.0  # foreign: input rows per video (T for a frame-wise tower)
        self.entering: int | None = None  # foreign: tokens entering the first block in the last call
        self.row_counts: list[Tensor] = []  # (L, B) per call whose rows kept different counts (threshold mode)
        self.entering_counts: list[Tensor] = []  # (B,) per call under a pixel-dependent input reduction (RLT)
        self._t0 = 0.0

    @staticmethod
    def _sync(x: Tensor) -> None:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        video = args[0] if args else kwargs.get("video")
        if self.foreign:
            video = _first_tensor((args, kwargs))
            if self.call is None and isinstance(video, Tensor):
                self.call = meta_call(args, kwargs)
                if self.batch_videos:
                    self.rows_per_video = video.shape[0] / self.batch_videos
        if isinstance(video, Tensor):
            self._sync(video)
            self.input_shape = tuple(video.shape)
            if not self.foreign and content_dependent(self.encoder):  # RLT: the tokens each video's pixels keep
                self.entering_counts.append(video_entering(self.encoder, video))
        self._t0 = time.perf_counter()

    def first_block(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pre-hook on a grafted encoder's first block: the tokens entering it."""
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        if isinstance(hidden, Tensor) and hidden.dim() == 3:
            self.entering = hidden.shape[1]

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        out = _first_tensor(output)
        if isinstance(out, Tensor):
            self._sync(out)
        elapsed = time.perf_counter() - self._t0
        state = getattr(self.encoder, "last_merge_state", None) if self.foreign else \
            (args[1] if len(args) > 1 else kwargs.get("state"))
        if self.calls == 0:
            if isinstance(state, MergeState) and state.tokens_per_layer:
                self.tokens_per_layer = list(state.tokens_per_layer)
            elif self.foreign and self.entering is not None:  # merging off: every block keeps them all
                self.tokens_per_layer = [self.entering] * len(self.encoder.blocks)
            elif isinstance(out, Tensor):
                self.tokens_per_layer = [out.shape[1]]
        rows = state.row_counts() if isinstance(state, MergeState) else None
        if rows is not None:
            self.row_counts.append(rows.cpu())
        if self.encoder in _WARMED:
            if self.input_shape is not None:
                self.seconds += elapsed
                self.videos += self.input_shape[0] / self.rows_per_video
        else:
            _WARMED.add(self.encoder)
        self.calls += 1

    def flops(self) -> Any:
        """The FlopReport per video of the measured input (None when no call was seen)."""
        if not self.foreign:
            if content_dependent(self.encoder):  # RLT: counted per video from entering_counts (EncoderStats)
                return None
            return encoder_flops(self.encoder, self.input_shape) if self.input_shape is not None else None
        if self.call is None or self.input_shape is None:
            return None
        return call_flops(self.encoder, *self.call, per=self.input_shape[0] / self.rows_per_video)


def _first_tensor(obj: Any) -> Tensor | None:
    """The first tensor in a call's arguments or output (tuples, lists, dicts and transformers outputs)."""
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):  # transformers ModelOutput is an OrderedDict of its set fields
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class EncoderStats(Callback):
    """Tokens per block, videos/s and GFLOPs of the mergeable encoders during validation / test.

    Args:
        flops: also count GFLOPs per video (meta device, instant).
        target: attribute path of the module to measure (default: the whole LightningModule).

    ``results`` after an epoch: ``tokens_per_layer`` (first encoder, first batch), ``videos_per_s`` (first encoder,
    this process, its first call in the process excluded as warm-up; None when nothing else was timed: shown
    as ``NOT_TIMED``), ``gflops`` / ``merge_gmacs`` (per video). When the videos keep different token counts
    (threshold mode: ``MergeState.row_counts``): ``tokens_per_layer`` is the mean over the epoch's videos,
    ``tokens_per_video`` and ``gflops_per_video`` hold the mean / min / max, ``gflops`` / ``merge_gmacs`` the means.
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
            if meter.foreign and len(encoder.blocks):
                self._handles.append(encoder.blocks[0].register_forward_pre_hook(meter.first_block, with_kwargs=True))

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
        varied = bool(meter.row_counts) and not meter.foreign  # per-video counts: counted per video below
        report = meter.flops() if self.flops and not varied else None
        if report is not None:
            results.update(gflops=report.gflops, merge_gmacs=report.merge_gmacs)
        if varied:  # videos kept different token counts (threshold mode): per video mean / min / max
            per_video = row_flops(meter.encoder, torch.cat(meter.row_counts, dim=1), video_shape=meter.input_shape) \
                if self.flops else None
            counts = torch.cat(meter.row_counts, dim=1).double()
            results.update(tokens_per_layer=[round(float(c), 2) for c in counts.mean(1)],
                           tokens_per_video={"mean": float(counts[-1].mean()), "min": float(counts[-1].min()),
                                             "max": float(counts[-1].max())})
            if per_video is not None:
                results.update(gflops=per_video["gflops"]["mean"], merge_gmacs=per_video["merge_gmacs"]["mean"],
                               gflops_per_video=per_video["gflops"])
        if meter.entering_counts and self.flops:  # RLT: each video counted at the tokens its pixels kept
            per_video = entering_flops(meter.encoder, torch.cat(meter.entering_counts), meter.input_shape)
            results.update(gflops=per_video["gflops"]["mean"], merge_gmacs=per_video["merge_gmacs"]["mean"],
                           gflops_per_video=per_video["gflops"], tokens_per_video=per_video["tokens_in"])
        self.results = results
        target = getattr(pl_module, "results", None)
        if isinstance(target, dict):
            target.update(results)

    def _batch_start(self, batch: Any) -> None:
        video = batch.get("video") if isinstance(batch, dict) else None
        for meter in self._meters:
            meter.batch_videos = int(video.shape[0]) if isinstance(video, Tensor) else None

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._batch_start(batch)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)


__all__ = ["EncoderStats"]
