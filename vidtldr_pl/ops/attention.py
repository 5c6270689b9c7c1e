"""Multi-head attention core with an optional per-key additive bias (proportional attention).

"explicit": softmax(q k^T + bias) v with the map materialised; it also returns the UNBIASED softmax, as the
official vid-TLDR code does (the reference path). "fused": F.scaled_dot_product_attention, no map kept (the
default). "flex": FlexAttention with the bias as a score_mod (torch.compile'd on CUDA; eager elsewhere, where it is
a slow, inference-only check of the same arithmetic); offered so that the fastest exact kernel can be picked on a
given GPU (``benchmarks/encoder_throughput.py --rows ... flex-vidtldr``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_MODES = ("fused", "explicit", "flex")

_compiled_flex: Callable | None = None


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
    q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None = None, mode: str = "fused", need_probs: bool = False
) -> tuple[Tensor, Tensor | None]:
    """q, k, v: (B, H, N, d); bias: (B, 1, 1, N) or None -> (out (B, H, N, d), probs (B, H, N, N) or None).

    probs (explicit mode with need_probs only) is softmax(q k^T * scale) WITHOUT the bias, detached.
    """
    if mode == "explicit":
        logits = (q * scale) @ k.transpose(-2, -1)
        probs = logits.softmax(dim=-1).detach() if need_probs else None
        attn = (logits + bias if bias is not None else logits).softmax(dim=-1)  # a float32 bias: float32 softmax
        return attn.to(v.dtype) @ v, probs
    if mode == "fused":
        mask = bias.to(q.dtype) if bias is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None
    if mode == "flex":
        return _flex(q, k, v, scale, bias), None
    raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
