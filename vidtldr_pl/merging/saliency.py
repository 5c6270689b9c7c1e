"""vid-TLDR saliency: negative entropy of the head-averaged attention, then min-max, mask and sharpening.

Three ways to get the raw score sum_j a_ij log a_ij (a = attention averaged over heads, WITHOUT the size bias):
from explicit probabilities (the official reference: p * log p, NaN where a probability underflows to 0, as
official), or from q and k without storing N x N: in query chunks with PyTorch ("chunked", any device) or with
the Triton kernels ("triton", CUDA). Both q/k paths take 0 log 0 = 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .state import AttentionInfo


def negative_entropy_from_probs(probs: Tensor, zero_safe: bool = False, pad: Tensor | None = None) -> Tensor:
    """probs: (B, H, N, M) attention rows -> (B, N, 1) sum_j p_ij log p_ij of the head mean p.

    zero_safe: take 0 log 0 = 0 (as the q/k paths do) instead of the official NaN of an underflowed probability.
    pad: (B, M) padding keys (rows of different counts), whose probabilities must be 0 already (the explicit
    kernel leaves them out of its softmax: ``ops.attention``); they add nothing (no official NaN from 0 log 0).
    """
    if pad is not None:
        p = probs.float().mean(dim=1)
        if zero_safe:
            return torch.special.xlogy(p, p).sum(dim=-1, keepdim=True)
        return torch.where(pad[:, None, :], 0.0, p * p.log()).sum(dim=-1, keepdim=True)
    p = probs.float().mean(dim=1)
    if zero_safe:
        return torch.special.xlogy(p, p).sum(dim=-1, keepdim=True)
    return (p * p.log()).sum(dim=-1, keepdim=True)


SALIENCY_BACKENDS = ("auto", "chunked", "triton")


def check_saliency_backend(backend: str) -> str:
    """backend if it is one of SALIENCY_BACKENDS, else a ValueError naming it."""
    if backend not in SALIENCY_BACKENDS:
        raise ValueError(f"unknown saliency_backend {backend!r}; choose one of {SALIENCY_BACKENDS}")
    return backend


def negative_entropy_from_qk(q: Tensor, k: Tensor, chunk_size: int = 512, backend: str = "auto",
                             pad: Tensor | None = None) -> Tensor:
    """q: (B, H, N, d) scaled queries, k: (B, H, M, d) keys -> (B, N, 1) float32, exact, never N x M at once.

    backend "chunked": PyTorch, query chunks of chunk_size (O(H x chunk x M) memory); "triton": the Triton kernels
    (CUDA); "auto": triton for CUDA tensors when Triton is installed, else chunked. pad: (B, M) padding keys,
    left out of every softmax (always the chunked path).
    """
    if pad is None and resolve_saliency_backend(backend, q.device) == "triton":
        from ..ops.saliency_triton import negative_entropy_triton

        return negative_entropy_triton(q, k)
    out = []
    for start in range(0, q.shape[-2], chunk_size):
        logits = q[..., start : start + chunk_size, :].float() @ k.float().transpose(-1, -2)
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
        p = logits.softmax(dim=-1).mean(dim=1)
        out.append(torch.special.xlogy(p, p).sum(dim=-1, keepdim=True))
    return torch.cat(out, dim=1)


def resolve_saliency_backend(backend: str, device: torch.device) -> str:
    """The backend that runs on device: "auto" is "triton" for CUDA when Triton is installed, else "chunked"."""
    if check_saliency_backend(backend) != "auto":
        return backend
    if device.type != "cuda":
        return "chunked"
    from ..ops.saliency_triton import HAS_TRITON

    return "triton" if HAS_TRITON else "chunked"


def sharpen(score: Tensor, pad: Tensor | None = None) -> Tensor:
    """score: (B, N, 1) raw saliency -> (B, N, 1) in [0, 1]; tokens below the mean (background) get 0.

    Per sample: min-max to [0, 1]; background = strictly below the mean; centre on the mean; divide by the max.
    pad: (B, N) padding tokens, left out of the min, max and mean (their saliency is 0).
    """
    if pad is not None:
        return _sharpen_rows(score, pad[..., None])
    score = score - score.amin(dim=1, keepdim=True)
    score = score / score.amax(dim=1, keepdim=True)
    mean = score.mean(dim=1, keepdim=True)
    background = score < mean
    score = score - mean
    score = score / score.amax(dim=1, keepdim=True)
    return score.masked_fill(background, 0.0)


def _sharpen_rows(score: Tensor, pad: Tensor) -> Tensor:
    """``sharpen`` over the real tokens of each row: score (B, N, 1), pad (B, N, 1) True at padding."""
    real = (~pad).float()
    score = score.masked_fill(pad, 0.0)
    score = score - score.masked_fill(pad, float("inf")).amin(dim=1, keepdim=True)
    score = score / score.masked_fill(pad, float("-inf")).amax(dim=1, keepdim=True)
    mean = (score * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True)
    background = (score < mean) | pad
    score = score - mean
    score = score / score.masked_fill(pad, float("-inf")).amax(dim=1, keepdim=True)
    return score.masked_fill(background, 0.0)


def raw_saliency(
    attn: AttentionInfo | Tensor, chunk_size: int = 512, backend: str = "auto", zero_safe: bool = False,
    pad: Tensor | None = None,
) -> Tensor:
    """vid-TLDR's score before ``sharpen``: (B, N, 1) negative entropy of the head-mean attention, from explicit
    probs (B, H, N, N) or from q / k (chunk_size and backend: see negative_entropy_from_qk). zero_safe: see
    negative_entropy_from_probs (the q / k paths are always zero-safe). pad: (B, N) padding tokens (rows of
    different counts): left out as keys (their queries' scores are meaningless: mask them downstream)."""
    with torch.no_grad():
        if isinstance(attn, Tensor):
            return negative_entropy_from_probs(attn, zero_safe, pad)
        if attn.probs is not None:
            return negative_entropy_from_probs(attn.probs, zero_safe, pad)
        if attn.q is not None and attn.k is not None:
            return negative_entropy_from_qk(attn.q, attn.k, chunk_size, backend, pad)
        raise ValueError("vid-TLDR needs the attention: AttentionInfo has neither probs nor q and k")


def vidtldr_saliency(attn: AttentionInfo | Tensor, chunk_size: int = 512, backend: str = "auto",
                     pad: Tensor | None = None) -> Tensor:
    """The official vid-TLDR token saliency (B, N, 1) from explicit probs (B, H, N, N) or from q / k.

    chunk_size and backend choose how q / k are turned into the score (see negative_entropy_from_qk). pad: (B, N)
    padding tokens of rows of different counts (left out as keys and from the per-row statistics; saliency 0).
    """
    with torch.no_grad():
        return sharpen(raw_saliency(attn, chunk_size, backend, pad=pad), pad)
