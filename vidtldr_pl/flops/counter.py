"""FLOPs of a forward pass, in torch's unit (FlopCounterMode: 2 per multiply-add) and in the paper's unit
(multiply-adds of matmul / linear / conv / attention, as fvcore counts them), split into encoder and merge step.

torch's counter misses the CPU flash-attention op; its formula is registered here so fused attention counts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
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
