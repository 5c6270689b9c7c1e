"""FLOPs of a forward pass, in torch's unit (FlopCounterMode: 2 per multiply-add) and in the paper's unit
(multiply-adds of matmul / linear / conv / attention, as fvcore counts them), split into encoder and merge step.

torch's counter misses the CPU flash-attention op; its formula is registered here so fused attention counts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count


def _register_cpu_sdpa() -> None:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return

    def formula(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    try:
        register_flop_formula(op)(formula)
    except RuntimeError:  # already registered (by a newer torch or an earlier import)
        pass


_register_cpu_sdpa()


@dataclass
class FlopReport:
    """flops: torch count (2 x MACs) of the whole call; merge_flops: the part inside merge slots (matching,
    saliency). tokens_per_layer: tokens after each block (when the call reports them)."""

    flops: int
    merge_flops: int
    tokens_per_layer: list[int] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        """Paper unit (fvcore): multiply-adds, whole call."""
        return self.flops / 2e9

    @property
    def encoder_gmacs(self) -> float:
        """Multiply-adds outside the merge step (the network itself)."""
        return (self.flops - self.merge_flops) / 2e9

    @property
    def merge_gmacs(self) -> float:
        return self.merge_flops / 2e9


def count_flops(fn: Callable[[], Any]) -> tuple[FlopReport, Any]:
    """Run fn() under FlopCounterMode; merge slots are modules whose name ends in ".merge"."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = fn()
    counts = counter.get_flop_counts()
    merge = sum(sum(v.values()) for k, v in counts.items() if k.endswith(".merge"))
    return FlopReport(flops=counter.get_total_flops(), merge_flops=merge), out


def encoder_flops(encoder: nn.Module, video_shape: tuple[int, ...] | None = None) -> FlopReport:
    """FLOPs per video of a mergeable encoder under its current merge setting, counted on the meta device (shapes
    only: instant, no memory, the encoder's own weights untouched). video_shape: one input, e.g. (1, 3, T, H, W);
    default ``encoder.example_input(1)``. Merging decisions do not change the count, only the token numbers do."""
    from torch.func import functional_call

    shape = tuple(video_shape) if video_shape is not None else tuple(encoder.example_input(1).shape)
    video = torch.zeros((1, *shape[1:]), device="meta")
    tensors = {n: torch.empty_like(t, device="meta") for n, t in encoder.named_parameters()}
    tensors.update({n: torch.empty_like(t, device="meta") for n, t in encoder.named_buffers()})
    state = encoder.new_merge_state()
    report, _ = count_flops(lambda: functional_call(encoder, tensors, (video, state), strict=False))
    report.tokens_per_layer = list(state.tokens_per_layer)
    return report


def _map_tensors(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    """obj with every tensor in it (nested tuples / lists / dicts) replaced by fn(tensor)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def meta_call(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A call's arguments with every tensor replaced by a meta tensor of its shape and dtype (keeps no memory)."""
    return _map_tensors(args, lambda t: torch.empty_like(t, device="meta")), \
        _map_tensors(kwargs, lambda t: torch.empty_like(t, device="meta"))


def call_flops(module: nn.Module, args: tuple, kwargs: dict, per: float = 1.0) -> FlopReport:
    """FLOPs of one call ``module(*args, **kwargs)`` divided by ``per`` (the videos the call held), for an encoder
    without ``example_input`` (a grafted transformers / timm / open_clip encoder: ``vidtldr_pl.foreign``).

    Counted on the meta device (the module's parameters and the call's tensors as meta tensors of their shapes); a
    library forward that cannot run on meta (a data-dependent step) runs once on zeros of those shapes on the
    module's device instead. ``tokens_per_layer``: from the call's MergeState (``module.last_merge_state``), when it
    merged."""
    from torch.func import functional_call

    def run(device: torch.device | str) -> FlopReport:
        def place(t: Tensor) -> Tensor:
            return torch.empty_like(t, device="meta") if device == "meta" else torch.zeros_like(t, device=device)

        tensors = {n: place(t) for n, t in module.named_parameters()} if device == "meta" else {}
        if device == "meta":
            tensors.update({n: place(t) for n, t in module.named_buffers()})
        call_args, call_kwargs = _map_tensors(args, place), _map_tensors(kwargs, place)
        report, _ = count_flops(lambda: functional_call(module, tensors, call_args, call_kwargs, strict=False))
        return report

    try:
        report = run("meta")
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        first = next(module.parameters(), None)
        report = run(first.device if first is not None else "cpu")
    state = getattr(module, "last_merge_state", None)
    if state is not None and state.tokens_per_layer:
        report.tokens_per_layer = list(state.tokens_per_layer)
    per = max(per, 1e-9)
    report.flops, report.merge_flops = round(report.flops / per), round(report.merge_flops / per)
    return report
