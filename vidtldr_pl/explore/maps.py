"""What a merge setting keeps, as maps over the frames: per-layer token saliency, vid-TLDR's background mask and
the merged groups (from source tracing). Pure torch: one extra forward of the encoder, its merge setting untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class MergeMaps:
    """Maps of one video on the (T', h, w) patch grid (T' = frames / tubelet).

    saliency: (L, T', h, w) the method's token saliency in [0, 1] at each of the L merging blocks, spread over the
        patches each token holds (a token's score on all its patches); background: (T', h, w) bool, patches whose
        saliency is 0 at the first merging block (vid-TLDR's background mask); groups: (T', h, w) long, the final
        token each patch ended in (-1: no token holds it with a weight above 0: merged with saliency weight 0, or
        dropped); group_size: (T', h, w) patches in that token (0 for -1); share: (L, T') each frame's share
        of the saliency (the paper's Fig. 5); layers: the block index of each saliency map; tokens_per_layer.
    """

    saliency: Tensor
    background: Tensor
    groups: Tensor
    group_size: Tensor
    share: Tensor
    layers: list[int]
    tokens_per_layer: list[int]


@contextmanager
def recording_saliency(method: object, sink: list[tuple[Tensor, Tensor | None]]):
    """Record (saliency (B, N, 1), source (B, N, N0) or None) at every ``token_saliency`` call of ``method``."""
    original = method.token_saliency

    def record(attn, state):
        s = original(attn, state)
        src = getattr(state, "source", None)
        sink.append((s.detach().float(), None if src is None else src.detach().float()))
        return s

    method.token_saliency = record
    try:
        yield sink
    finally:
        del method.token_saliency


def patch_values(values: Tensor, source: Tensor | None) -> Tensor:
    """values: (B, N) per token, source: (B, N, N0) or None (identity) -> (B, N0) each token's value on its
    patches."""
    if source is None:
        return values
    holds = (source > 0).float()
    return (values[:, :, None] * holds).amax(dim=1)


@torch.no_grad()
def merge_maps(encoder: nn.Module, video: Tensor) -> MergeMaps:
    """encoder: a patched mergeable encoder (``apply_merge``) whose method has ``token_saliency`` (vid-TLDR
    with either saliency); video: (1, 3, T, H, W) as the encoder takes it. Runs one forward with source tracing."""
    settings = encoder.merge_settings
    method = settings.method
    if method is None or not hasattr(method, "token_saliency"):
        raise ValueError(f"the encoder's merge method {type(method).__name__} has no token saliency to show "
                         "(use vidtldr or vidtldr_repshift)")
    if video.ndim != 5 or video.shape[0] != 1:
        raise ValueError(f"video must be (1, 3, T, H, W), got {tuple(video.shape)}")
    cfg = encoder.cfg
    prefix = int(getattr(encoder, "num_prefix_tokens", 0))
    grid = (video.shape[2] // cfg.tubelet_size, video.shape[3] // cfg.patch_size, video.shape[4] // cfg.patch_size)
    state = encoder.new_merge_state()
    state.trace_source = True
    calls: list[tuple[Tensor, Tensor | None]] = []
    with recording_saliency(method, calls):
        encoder(video, state)
    if not calls:
        raise ValueError("the merge method never scored tokens: is the r schedule all zeros?")
    layers = [i for i, r in enumerate(settings.schedule) if r][:len(calls)]
    maps = []
    for s, src in calls:
        values = patch_values(s[..., 0], src)[0]
        maps.append(values[prefix:] if values.shape[0] == prefix + grid[0] * grid[1] * grid[2] else values)
    saliency = torch.stack(maps).reshape(len(calls), *grid)
    background = saliency[0] == 0
    source = state.source[0]  # (N', N0)
    patches = source[:, prefix:] if source.shape[1] > grid[0] * grid[1] * grid[2] else source
    held = patches.amax(dim=0) > 0  # patches merged with weight 0 (vid-TLDR's background) or dropped: none
    sizes = (patches > 0).sum(dim=1)
    groups = torch.where(held, patches.argmax(dim=0), -1)
    group_size = torch.where(held, sizes[groups.clamp_min(0)], 0)
    mass = saliency.flatten(2).sum(-1)  # (L, T')
    share = mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)
    return MergeMaps(saliency, background, groups.reshape(grid), group_size.reshape(grid), share, layers,
                     list(state.tokens_per_layer))


__all__ = ["MergeMaps", "merge_maps", "patch_values", "recording_saliency"]
