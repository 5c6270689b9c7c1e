"""Rows regrouped for methods that merge inside neighbourhoods (frames, spatial positions) or in a token order of
their own (PiToMe's energy order), and the merge / keep arithmetic applied to the regrouped rows.

A joint video row is ``prefix + T x S`` tokens, frame-major (``TokenGrid``). ``to_frames`` gives one group per
frame (B x T, S, C), ``to_tubes`` one group per spatial position across the frames (B x S, T, C); ``from_frames`` /
``from_tubes`` put the (shortened) groups back, frame-major, behind the untouched prefix.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .matching import MergePlan, merge_tokens


def to_frames(t: Tensor, prefix: int, frames: int) -> Tensor:
    """t: (B, prefix + T x S, C) -> (B x T, S, C), one group per frame."""
    body = t[:, prefix:]
    b, n, c = body.shape
    return body.reshape(b * frames, n // frames, c)


def from_frames(groups: Tensor, head: Tensor) -> Tensor:
    """groups: (B x T, S', C), head: (B, prefix, C) -> (B, prefix + T x S', C), frame-major."""
    b = head.shape[0]
    return torch.cat([head, groups.reshape(b, -1, groups.shape[-1])], dim=1)


def to_tubes(t: Tensor, prefix: int, frames: int) -> Tensor:
    """t: (B, prefix + T x S, C) -> (B x S, T, C), one group per spatial position (its tokens over the frames)."""
    body = t[:, prefix:]
    b, n, c = body.shape
    return body.reshape(b, frames, n // frames, c).transpose(1, 2).reshape(-1, frames, c)


def from_tubes(groups: Tensor, head: Tensor) -> Tensor:
    """groups: (B x S, T', C), head: (B, prefix, C) -> (B, prefix + T' x S, C), frame-major (frame t' holds the
    t'-th token of every position)."""
    b = head.shape[0]
    bs, t, c = groups.shape
    body = groups.reshape(b, bs // b, t, c).transpose(1, 2).reshape(b, -1, c)
    return torch.cat([head, body], dim=1)


def merge_groups(plan: MergePlan, average, x: Tensor, size: Tensor | None, source: Tensor | None,
                 keep_b: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Apply a ToMe-layout plan (a = even, b = odd tokens of each group) to x (G, n, C), size (G, n, 1) or None,
    source (G, n, N0) or None. average: the method's ``merge_average``. keep_b: (G, n_b, 1) 0 / 1, 0 = drop that
    destination's own content (size and source) before its sources join it (the video study's hybrid mode).
    Returns (x', size', source')."""
    if size is None:
        size = torch.ones_like(x[..., :1], dtype=torch.float32)
    if keep_b is not None:
        size = size.clone()
        size[:, 1::2] = size[:, 1::2] * keep_b
        if source is not None:
            source = source.clone()
            source[:, 1::2] = source[:, 1::2] * keep_b
    x, size = average(plan, x, size)
    if source is not None:
        source = merge_tokens(plan, source, mode="amax")
    return x, size, source


def keep_groups(keep_idx: Tensor, *tensors: Tensor | None) -> list[Tensor | None]:
    """Keep the tokens at keep_idx (G, n', 1) (in that order) of each tensor (G, n, *) (None passes through)."""
    return [None if t is None else t.gather(1, keep_idx.expand(-1, -1, t.shape[-1])) for t in tensors]


__all__ = ["from_frames", "from_tubes", "keep_groups", "merge_groups", "to_frames", "to_tubes"]
