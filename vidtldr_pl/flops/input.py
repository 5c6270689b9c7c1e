"""FLOPs per video under an input reduction (``merging.input_reduction``): frame_stride and resize are counted by
shapes like any setting (``encoder_flops``); RLT's token count depends on the pixels, so each video's count is read
from the video (or from its forward) and the encoder is then counted on the meta device at that count."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..merging.input_reduction import is_input_method
from .counter import FlopReport, encoder_flops


def content_dependent(encoder: nn.Module) -> bool:
    """True when the encoder's setting keeps a number of tokens that depends on the pixels (RLT)."""
    method = getattr(getattr(encoder, "merge_settings", None), "method", None)
    return is_input_method(method) and bool(getattr(method, "content_dependent", False))


def flops_at_entering(encoder: nn.Module, entering: int, video_shape: tuple[int, ...] | None = None) -> FlopReport:
    """FLOPs of one video whose rows enter the first block with ``entering`` tokens (prefix included) under the
    encoder's content-dependent input reduction (its ``forced_count`` set for the meta count, then cleared)."""
    method = encoder.merge_settings.method
    method.forced_count = int(entering) - encoder.num_prefix_tokens
    try:
        return encoder_flops(encoder, video_shape)
    finally:
        method.forced_count = None


def entering_flops(encoder: nn.Module, entering: Tensor, video_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """entering (V,): tokens entering the first block of each of V videos (for a frame-wise encoder the widest row
    of each video) -> {"gflops": {"mean", "min", "max"}, "merge_gmacs": {...}, "tokens_in": {...}, "videos": V};
    each distinct count is counted once on the meta device."""
    values, inverse = torch.unique(entering.long().cpu(), return_inverse=True)
    reports = [flops_at_entering(encoder, int(n), video_shape) for n in values.tolist()]
    gflops = torch.tensor([r.gflops for r in reports], dtype=torch.float64)[inverse]
    merge = torch.tensor([r.merge_gmacs for r in reports], dtype=torch.float64)[inverse]

    def stats(v: Tensor) -> dict[str, float]:
        return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}

    return {"gflops": stats(gflops), "merge_gmacs": stats(merge), "tokens_in": stats(entering.double().cpu()),
            "videos": int(entering.numel())}


def video_entering(encoder: nn.Module, video: Tensor) -> Tensor:
    """(V,) tokens entering the first block of each video of ``video`` (B, 3, T, H, W) under the encoder's setting
    (for a frame-wise encoder: its widest frame row, as a padded batch computes it)."""
    method = encoder.merge_settings.method
    if content_dependent(encoder):
        with torch.no_grad():
            kept = method.keep_mask(encoder, video).sum(dim=1)  # (rows,)
        per_video = kept.reshape(video.shape[0], -1).amax(dim=1)
        return per_video + encoder.num_prefix_tokens
    n = method.tokens_entering(encoder, video) if is_input_method(method) else encoder.num_tokens
    return torch.full((video.shape[0],), int(n), dtype=torch.long)


def video_flops(encoder: nn.Module, video: Tensor) -> list[FlopReport]:
    """One FlopReport per video of ``video`` (B, 3, T, H, W) for a mergeable encoder under its current setting: for a
    content-dependent input reduction (RLT) at the count its pixels give (``video_entering``), else the shape count
    of one video for every video."""
    shape = (1, *video.shape[1:])
    if not content_dependent(encoder):
        report = encoder_flops(encoder, shape)
        return [report for _ in range(video.shape[0])]
    return [flops_at_entering(encoder, int(n), shape) for n in video_entering(encoder, video).tolist()]


__all__ = ["content_dependent", "entering_flops", "flops_at_entering", "video_entering", "video_flops"]
