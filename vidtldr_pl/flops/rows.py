"""FLOPs per video when the videos of a batch keep different token counts (threshold mode, per-row r): each
video is counted as the fixed schedule it actually went through (its own r per block), on the meta device.

``row_flops(encoder, counts)`` -> mean / min / max over the videos of GFLOPs, merge GMACs and final tokens.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .counter import FlopReport, encoder_flops


def _fixed_method(method: Any) -> Any:
    """The method a video's own schedule runs: the inner method of a threshold wrapper, else the method."""
    return getattr(method, "inner", method)


def schedule_flops(encoder: nn.Module, schedule: list[int], video_shape: tuple[int, ...] | None = None) -> FlopReport:
    """FLOPs per video of ``encoder`` with its current method at a fixed per-block schedule (restored after)."""
    from ..merging.encoder import LayerMerge

    saved = [block.merge for block in encoder.blocks]
    method = next((m.method for m in saved if m is not None), None)
    try:
        for block, r in zip(encoder.blocks, schedule):
            block.merge = LayerMerge(_fixed_method(method), int(r)) if r and method is not None else None
        return encoder_flops(encoder, video_shape)
    finally:
        for block, merge in zip(encoder.blocks, saved):
            block.merge = merge


def row_flops(encoder: nn.Module, counts: Tensor, entering: int | None = None,
              video_shape: tuple[int, ...] | None = None, max_distinct: int = 64) -> dict[str, Any]:
    """counts (L, V): tokens of each of V videos (rows) after each block (``MergeState.row_counts``, concatenated)
    -> {"gflops": {"mean", "min", "max"}, "merge_gmacs": {...}, "tokens_out": {...}, "videos": V, "distinct": n,
    "counted": n'}. Each distinct per-video schedule is counted once; above ``max_distinct`` of them, that many
    spread over the range of total tokens are counted and the mean weights each by the videos nearest to it."""
    entering = entering if entering is not None else encoder.num_tokens
    before = torch.cat([torch.full_like(counts[:1], entering), counts[:-1]])
    schedules, inverse = torch.unique((before - counts).t(), dim=0, return_inverse=True)
    weights = torch.bincount(inverse, minlength=schedules.shape[0]).double()
    picked = torch.arange(schedules.shape[0])
    if schedules.shape[0] > max_distinct:
        order = schedules.sum(1).argsort()
        picked = order[torch.linspace(0, len(order) - 1, max_distinct).round().long().unique()]
        nearest = (schedules.sum(1)[:, None] - schedules[picked].sum(1)[None]).abs().argmin(1)
        weights = torch.bincount(nearest, weights=weights, minlength=len(picked))
    else:
        weights = weights[picked]
    reports = [schedule_flops(encoder, schedules[i].tolist(), video_shape) for i in picked.tolist()]
    gflops = torch.tensor([r.gflops for r in reports], dtype=torch.float64)
    merge = torch.tensor([r.merge_gmacs for r in reports], dtype=torch.float64)

    def stats(values: Tensor) -> dict[str, float]:
        return {"mean": float((values * weights).sum() / weights.sum()), "min": float(values.min()),
                "max": float(values.max())}

    final = counts[-1].double()
    return {"gflops": stats(gflops), "merge_gmacs": stats(merge),
            "tokens_out": {"mean": float(final.mean()), "min": float(final.min()), "max": float(final.max())},
            "tokens_per_layer_mean": [round(float(c), 2) for c in counts.double().mean(1)],
            "videos": int(counts.shape[1]), "distinct": int(schedules.shape[0]), "counted": len(reports)}


__all__ = ["row_flops", "schedule_flops"]
