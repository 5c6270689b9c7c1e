"""vid-TLDR saliency: negative entropy of the head-averaged attention, then min-max, mask and sharpening.

Two ways to get the raw score sum_j a_ij log a_ij (a = attention averaged over heads, WITHOUT the size bias):
from explicit probabilities (the official reference) or from q and k in query chunks (never stores N x N).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .state import AttentionInfo


def negative_entropy_from_probs(probs: Tensor) -> Tensor:
    """probs: (B, H, N, M) attention rows -> (B, N, 1) sum_j p_ij log p_ij of the head mean p."""
    p = probs.float().mean(dim=1)
    return (p * p.log()).sum(dim=-1, keepdim=True)


def negative_entropy_from_qk(q: Tensor, k: Tensor, chunk_size: int = 512) -> Tensor:
    """q: (B, H, N, d) scaled queries, k: (B, H, M, d) keys -> (B, N, 1), exact, O(chunk x M) memory per head."""
    out = []
    for start in range(0, q.shape[-2], chunk_size):
        logits = q[..., start : start + chunk_size, :].float() @ k.float().transpose(-1, -2)
        out.append(negative_entropy_from_probs(logits.softmax(dim=-1)))
    return torch.cat(out, dim=1)


def sharpen(score: Tensor) -> Tensor:
    """score: (B, N, 1) raw saliency -> (B, N, 1) in [0, 1]; tokens below the mean (background) get 0.

    Per sample: min-max to [0, 1]; background = strictly below the mean; centre on the mean; divide by the max.
    """
    score = score - score.amin(dim=1, keepdim=True)
    score = score / score.amax(dim=1, keepdim=True)
    mean = score.mean(dim=1, keepdim=True)
    background = score < mean
    score = score - mean
    score = score / score.amax(dim=1, keepdim=True)
    return score.masked_fill(background, 0.0)


def vidtldr_saliency(attn: AttentionInfo | Tensor, chunk_size: int = 512) -> Tensor:
    """The official vid-TLDR token saliency (B, N, 1) from explicit probs (B, H, N, N) or from q / k."""
    with torch.no_grad():
        if isinstance(attn, Tensor):
            raw = negative_entropy_from_probs(attn)
        elif attn.probs is not None:
            raw = negative_entropy_from_probs(attn.probs)
        elif attn.q is not None and attn.k is not None:
            raw = negative_entropy_from_qk(attn.q, attn.k, chunk_size)
        else:
            raise ValueError("vid-TLDR needs the attention: AttentionInfo has neither probs nor q and k")
        return sharpen(raw)
