"""Multi-head attention core with an optional per-key additive bias (proportional attention).

"explicit": softmax(q k^T + bias) v with the map materialised; it also returns the UNBIASED softmax, as the
official vid-TLDR code does (the reference path). "fused": F.scaled_dot_product_attention, no map kept (the
default). "flex": FlexAttention with the bias as a score_mod (torch.compile'd on CUDA; eager elsewhere, where it is
a slow, inference-only check of the same arithmetic); offered so that the fastest exact kernel can be picked on a
given GPU (``benchmarks/encoder_throughput.py --rows ... flex-vidtldr``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_MODES = ("fused", "explicit", "flex")

_compiled_flex: Callable | None = None


@dataclass
class PackedBias:
    """The attention of packed rows: q / k / v (1, H, T, d) hold B rows' tokens one after another.

    lengths: (B,) tokens of each row (sum T); key_bias: (1, 1, 1, T) additive per-key bias (log size) or None.
    Every query attends to the keys of its own row only (block-diagonal attention).
    """

    lengths: Tensor
    key_bias: Tensor | None = None

    def segments(self) -> list[tuple[int, int]]:
        """(start, length) of each row's tokens."""
        lengths = self.lengths.tolist()
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        return list(zip(starts, lengths))

    def segment_ids(self) -> Tensor:
        """(T,) the row of each packed token."""
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=self.lengths.device), self.lengths)

    def dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The block-diagonal bias as a (1, 1, T, T) tensor (-inf across rows, key_bias within)."""
        seg = self.segment_ids()
        bias = torch.zeros(seg.shape[0], seg.shape[0], dtype=dtype, device=seg.device)
        bias = bias.masked_fill(seg[:, None] != seg[None, :], float("-inf"))[None, None]
        return bias if self.key_bias is None else bias + self.key_bias.to(dtype)


#: how packed rows are attended under mode "fused": "nested" (jagged nested tensors through
#: F.scaled_dot_product_attention, one call; needs no per-key bias) or per row ("loop"); a per-key bias (log size)
#: always runs per row, each row one dense sdpa call. "mask": one sdpa call with the dense block-diagonal mask.
PACKED_FUSED = "nested"


def _packed(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: PackedBias, mode: str,
            need_probs: bool) -> tuple[Tensor, Tensor | None]:
    """Block-diagonal attention of packed rows: q, k, v (1, H, T, d) -> (out (1, H, T, d), probs (B, H, M, M) per
    row, zero-padded to the longest row M, without the bias, explicit mode with need_probs only)."""
    if mode == "flex":
        seg = bias.segment_ids()
        key_bias = bias.key_bias.reshape(-1) if bias.key_bias is not None else None

        def block(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            extra = key_bias[kv_idx] if key_bias is not None else 0.0
            return torch.where(seg[q_idx] == seg[kv_idx], score + extra, float("-inf"))

        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, score_mod=block, scale=scale), None
    segments = bias.segments()
    if mode == "fused" and PACKED_FUSED == "mask":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.dense(q.dtype), scale=scale), None
    if mode == "fused" and PACKED_FUSED == "nested" and bias.key_bias is None:
        offsets = F.pad(bias.lengths.cumsum(0), (1, 0))

        def nest(t: Tensor) -> Tensor:  # (1, H, T, d) -> jagged (B, H, j, d)
            return torch.nested.nested_tensor_from_jagged(t[0].transpose(0, 1).contiguous(), offsets).transpose(1, 2)

        out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v), scale=scale)
        return out.transpose(1, 2).values().transpose(0, 1)[None], None
    outs, probs = [], []
    longest = max(n for _, n in segments)
    for s, n in segments:
        kb = bias.key_bias[..., s:s + n] if bias.key_bias is not None else None
        out, p = attention(q[:, :, s:s + n], k[:, :, s:s + n], v[:, :, s:s + n], scale, kb, mode, need_probs)
        outs.append(out)
        if p is not None:
            probs.append(F.pad(p, (0, longest - n, 0, longest - n)))
    return torch.cat(outs, dim=2), (torch.cat(probs) if probs else None)


def _flex(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """FlexAttention; bias (B, 1, 1, N) is added to every query's score of key n."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    if bias is None:
        return fn(q, k, v, scale=scale)
    key_bias = bias.reshape(bias.shape[0], bias.shape[-1])

    def add_key_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + key_bias[b, kv_idx]

    return fn(q, k, v, score_mod=add_key_bias, scale=scale)


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | PackedBias | None = None, mode: str = "fused",
    need_probs: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """q, k, v: (B, H, N, d); bias: (B, 1, 1, N) or None -> (out (B, H, N, d), probs (B, H, N, N) or None).

    probs (explicit mode with need_probs only) is softmax(q k^T * scale) WITHOUT the bias, detached; padding keys
    (a ``key_padding`` (B, N) attribute on the bias, ``MergeState.attention_bias``) are left out of it. bias a
    ``PackedBias``: q, k, v are packed rows (1, H, T, d), the attention block-diagonal, probs per row (B, H, M, M).
    """
    if isinstance(bias, PackedBias):
        return _packed(q, k, v, scale, bias, mode, need_probs)
    if mode == "explicit":
        logits = (q * scale) @ k.transpose(-2, -1)
        pad = getattr(bias, "key_padding", None)  # rows of different counts: probs over the real keys only
        if need_probs:
            probs = (logits if pad is None else logits.masked_fill(pad[:, None, None, :], float("-inf")))
            probs = probs.softmax(dim=-1).detach()
        else:
            probs = None
        attn = (logits + bias if bias is not None else logits).softmax(dim=-1)  # a float32 bias: float32 softmax
        return attn.to(v.dtype) @ v, probs
    if mode == "fused":
        mask = bias.to(q.dtype) if bias is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None
    if mode == "flex":
        return _flex(q, k, v, scale, bias), None
    raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
