"""Representation Shift (Choi et al., ICCV 2025, arXiv 2508.00367): a token's importance is how far a layer moves
its representation, D(F(x), x) with D the L2 distance. The paper measures it across the MLP: with the residual,
F(x) = x + MLP(LN(x)), so the shift is the L2 norm of what the MLP branch adds. No attention map is needed, so
any fused attention kernel runs unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor


def representation_shift(delta: Tensor) -> Tensor:
    """delta: (B, N, C) what a residual sublayer added to each token (after - before) -> (B, N, 1) float32 L2 norm.

    Detached: the shift ranks tokens, it is not differentiated through.
    """
    with torch.no_grad():
        return torch.linalg.vector_norm(delta.detach().float(), dim=-1, keepdim=True)
