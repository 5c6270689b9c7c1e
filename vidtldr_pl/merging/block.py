"""One pre-norm block's step with the merge slot, shared by our ``backbones.layers.Block`` and the foreign blocks
``vidtldr_pl.foreign`` adapts: attention residual, merge ("attn" position), MLP residual, merge ("mlp" position)."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .encoder import LayerMerge
from .shift import representation_shift
from .state import AttentionInfo, MergeState


class BranchedBlock(Protocol):
    """A block seen as its two residual branches (each with its norm, layer-scale and drop-path)."""

    merge: LayerMerge | None
    grad_checkpointing: bool
    training: bool

    def _attn_branch(self, x: Tensor, bias: Tensor | None, want_info: bool) -> tuple[Tensor, AttentionInfo | None]:
        """x (B, N, C), bias (B, 1, 1, N) log-size or None -> (what the attention residual adds, AttentionInfo)."""

    def _mlp_branch(self, x: Tensor) -> Tensor:
        """x (B, N, C) -> what the MLP residual adds (B, N, C)."""


def merging_block_forward(block: BranchedBlock, x: Tensor, state: MergeState) -> Tensor:
    """x: (B, N, C) -> (B, N', C); state carries sizes / sources / the representation shift across the blocks
    of one forward.

    The shift (``state.record_shift`` only) is what the MLP branch adds to each token, measured after the MLP
    residual; a method at the "attn" slot reads the previous block's, except in the first block, which hands it
    the shift across its own attention. With ``grad_checkpointing`` (training), the attention and MLP branches
    are recomputed in the backward pass; the merge step runs outside them, so the MergeState is updated exactly
    once per forward.
    """
    merge = block.merge
    want_info = merge is not None and merge.needs_attention
    bias = state.attention_bias()
    recompute = block.grad_checkpointing and block.training and torch.is_grad_enabled()
    if recompute:
        out, info = checkpoint(block._attn_branch, x, bias, want_info, use_reentrant=False)
    else:
        out, info = block._attn_branch(x, bias, want_info)
    x = x + out
    if merge is not None and merge.position == "attn":
        if merge.needs_shift and not state.tokens_per_layer:  # first block: no MLP has run yet
            state.shift = representation_shift(out)
        x = merge(x, state, info)
    out = checkpoint(block._mlp_branch, x, use_reentrant=False) if recompute else block._mlp_branch(x)
    x = x + out
    if state.record_shift:
        state.shift = representation_shift(out)
    if merge is not None and merge.position == "mlp":
        x = merge(x, state, info)
    state.tokens_per_layer.append(x.shape[1])
    return x


__all__ = ["BranchedBlock", "merging_block_forward"]
