"""Triton kernels for the exact vid-TLDR saliency sum_j a_ij log a_ij, a = softmax(q k^T) averaged over heads.

Two launches, no N x M map stored anywhere:
1. ``_row_softmax_stats``: per (batch, head, query) the row max m and 1 / sum_j exp(logit - m) of the UNBIASED
   logits (online, like flash attention).
2. ``_neg_entropy``: per block of queries and block of keys, recompute the logits of every head, sum
   exp(logit - m) / sum over the heads, divide by H and accumulate a log a (0 log 0 = 0) over the keys.

The max and the reciprocal sum are kept apart (not folded into one logsumexp) because logit - m is exact near the
max while logit - logsumexp rounds at the logit's magnitude: with sharp attention (logits ~50) the folded form
doubled the error of the merged sizes against the official fixtures.

Arithmetic is float32 whatever the input dtype (the dot products run with ``input_precision="ieee"``, so float32
inputs are not rounded to TF32). Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (the
interpreter the tests use). Import this module only when :data:`HAS_TRITON` is true.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    HAS_TRITON = False


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


if HAS_TRITON:

    @triton.jit
    def _row_softmax_stats(
        Q, K, MAX, RSUM,
        s_qb, s_qh, s_qn, s_qd,
        s_kb, s_kh, s_kn, s_kd,
        N, M, H, D,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Grid (cdiv(N, BLOCK_M), B * H): MAX[b, h, i] = max_j s_ij, RSUM[b, h, i] = 1 / sum_j exp(s_ij - MAX),
        s_ij = q_bhi . k_bhj (MAX, RSUM contiguous (B, H, N))."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < N
        mask_d = offs_d < D
        q_ptrs = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd
        q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, M, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < M
            k_ptrs = K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
            k = tl.load(k_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
            m_i = m_new
        tl.store(MAX + bh * N + offs_m, m_i, mask=mask_m)
        tl.store(RSUM + bh * N + offs_m, 1.0 / l_i, mask=mask_m)

    @triton.jit
    def _neg_entropy(
        Q, K, MAX, RSUM, OUT,
        s_qb, s_qh, s_qn, s_qd,
        s_kb, s_kh, s_kn, s_kd,
        N, M, H, D,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Grid (cdiv(N, BLOCK_M), B): OUT[b, i] = sum_j a_ij log a_ij,
        a_ij = mean_h exp(q_bhi . k_bhj - MAX[b, h, i]) * RSUM[b, h, i]."""
        pid_m = tl.program_id(0)
        b = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < N
        mask_d = offs_d < D
        acc = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, M, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < M
            a = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for h in range(H):
                q_ptrs = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd
                q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                k_ptrs = K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
                k = tl.load(k_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                row = (b * H + h) * N + offs_m
                m_i = tl.load(MAX + row, mask=mask_m, other=0.0)
                r_i = tl.load(RSUM + row, mask=mask_m, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
                a += tl.exp(s - m_i[:, None]) * r_i[:, None]
            a = a / H
            keep = mask_n[None, :] & (a > 0.0)
            acc += tl.sum(tl.where(keep, a * tl.log(tl.where(keep, a, 1.0)), 0.0), axis=1)
        tl.store(OUT + b * N + offs_m, acc, mask=mask_m)


def negative_entropy_triton(q: Tensor, k: Tensor, block_m: int = 64, block_n: int = 64) -> Tensor:
    """q: (B, H, N, d) scaled queries, k: (B, H, M, d) keys -> (B, N, 1) float32 sum_j a_ij log a_ij.

    a is the softmax of q k^T over the keys, averaged over the heads (no bias). Needs CUDA tensors, or CPU tensors
    under ``TRITON_INTERPRET=1``.
    """
    if not HAS_TRITON:
        raise RuntimeError("the Triton saliency needs the 'triton' package (pip install triton)")
    if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must be (B, H, N, d) and (B, H, M, d); got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.device != k.device:
        raise ValueError(f"q and k are on different devices: {q.device} and {k.device}")
    if q.device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            f"the Triton saliency runs on CUDA tensors (got {q.device}); on CPU use the chunked path "
            "(saliency_backend='chunked') or set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter"
        )
    b, h, n, d = q.shape
    m = k.shape[2]
    block_d = max(16, triton.next_power_of_2(d))
    row_max = torch.empty(b, h, n, device=q.device, dtype=torch.float32)
    row_rsum = torch.empty_like(row_max)
    out = torch.empty(b, n, device=q.device, dtype=torch.float32)
    strides = (*q.stride(), *k.stride(), n, m, h, d)
    _row_softmax_stats[(triton.cdiv(n, block_m), b * h)](
        q, k, row_max, row_rsum, *strides, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d
    )
    _neg_entropy[(triton.cdiv(n, block_m), b)](
        q, k, row_max, row_rsum, out, *strides, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return out.unsqueeze(-1)
