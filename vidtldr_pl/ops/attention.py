"""Multi-head attention core with an optional per-key additive bias (proportional attention).

"explicit": softmax(q k^T + bias) v with the map materialised; it also returns the UNBIASED softmax, as the
official vid-TLDR code does (the reference path). "fused": F.scaled_dot_product_attention, no map kept.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

ATTENTION_MODES = ("fused", "explicit")


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None = None, mode: str = "fused", need_probs: bool = False
) -> tuple[Tensor, Tensor | None]:
    """q, k, v: (B, H, N, d); bias: (B, 1, 1, N) or None -> (out (B, H, N, d), probs (B, H, N, N) or None).

    probs (explicit mode with need_probs only) is softmax(q k^T * scale) WITHOUT the bias, detached.
    """
    if mode == "explicit":
        logits = (q * scale) @ k.transpose(-2, -1)
        probs = logits.softmax(dim=-1).detach() if need_probs else None
        attn = (logits + bias if bias is not None else logits).softmax(dim=-1)
        return attn @ v, probs
    if mode == "fused":
        mask = bias.to(q.dtype) if bias is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None
    raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
