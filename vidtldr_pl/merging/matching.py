"""Bipartite soft matching (ToMe), the merge arithmetic and the drop arithmetic shared by every method.

The functions here are the single source of truth for the merge math; methods only decide the metric, the
number of tokens and the per-source weights (merges) or the score that ranks tokens (drops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MergePlan:
    """Which tokens merge where, for a bipartite split a = even positions, b = odd positions.

    src_idx: (B, r, 1) indices into a of merged tokens; dst_idx: (B, r, 1) their destinations in b;
    unm_idx: (B, |a| - r, 1) indices into a of kept tokens; src_weight: (B, r, 1) multiplier of each merged
    source (vid-TLDR saliency) or None for plain ToMe.
    """

    src_idx: Tensor
    dst_idx: Tensor
    unm_idx: Tensor
    src_weight: Tensor | None = None


#: the most similarity scores one matching step holds at once (B x rows x N/2, float32: 16 MiB); larger inputs are
#: matched in row chunks (``bipartite_soft_matching``'s ``max_scores``)
MAX_SCORES = 2**22


def best_matches(a: Tensor, b: Tensor, protected: int = 0, affine_scores: bool = False,
                 max_scores: int | None | str = "auto") -> tuple[Tensor, Tensor]:
    """For every row of a (B, Na, C) its best match in b (B, Nb, C) by cosine: (score (B, Na), index (B, Na)).

    The (B, Na, Nb) similarity matrix is never held whole when it has more than ``max_scores`` entries: rows go in
    chunks, each reduced to its row maximum (None: one chunk). Each row's scores are computed and reduced exactly as
    in one piece (the same dot products, the same first index on ties); a's rows are L2-normalised chunk by chunk,
    so no normalised copy of the whole input is held either. The first ``(protected + 1) // 2`` rows and
    ``protected // 2`` columns (the prefix tokens of the interleaved a / b split) score -inf. max_scores "auto":
    the module's ``MAX_SCORES`` when called (None there, too, holds the matrix whole).
    """
    if max_scores == "auto":
        max_scores = MAX_SCORES
    batch, rows, cols = a.shape[0], a.shape[-2], b.shape[-2]
    step = rows if max_scores is None else max(1, min(rows, max_scores // max(1, batch * cols)))
    bt = (b / b.norm(dim=-1, keepdim=True)).transpose(-1, -2)
    best, index = [], []
    for start in range(0, rows, step):
        rows_a = a[..., start:start + step, :]
        scores = (rows_a / rows_a.norm(dim=-1, keepdim=True)) @ bt
        if affine_scores:
            scores = (scores + 1) / 2
        if protected > 0:
            scores[..., : max(0, (protected + 1) // 2 - start), :] = -math.inf
            scores[..., :, : protected // 2] = -math.inf
        chunk_max, chunk_idx = scores.max(dim=-1)
        best.append(chunk_max)
        index.append(chunk_idx)
    if len(best) == 1:
        return best[0], index[0]
    return torch.cat(best, dim=-1), torch.cat(index, dim=-1)


def bipartite_soft_matching(
    metric: Tensor,
    r: int,
    protected: int = 0,
    sort_unmerged: bool = True,
    affine_scores: bool = False,
    max_scores: int | None | str = "auto",
) -> MergePlan:
    """Match each even token to its most similar odd token and pick the r best pairs.

    metric: (B, N, C) features to compare (L2-normalised here). protected: the first ``protected`` tokens never
    merge away nor receive merges (e.g. a CLS token). sort_unmerged: keep kept tokens in positional order
    (vid-TLDR; ToMe does so only with a CLS token). affine_scores: compare (cos + 1) / 2 as the official
    vid-TLDR does (changes only float rounding of the ranking). max_scores: the most similarity entries held at
    once (``best_matches``: row chunks above it, the same plan).
    """
    with torch.no_grad():
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        node_max, node_idx = best_matches(a, b, protected, affine_scores, max_scores)  # L2-normalised there
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if sort_unmerged:
            unm_idx = unm_idx.sort(dim=-2)[0]
    return MergePlan(src_idx=src_idx, dst_idx=dst_idx, unm_idx=unm_idx)


def merge_tokens(plan: MergePlan, t: Tensor, mode: str = "sum") -> Tensor:
    """Apply a plan to t: (B, N, C) -> (B, N - r, C).

    Output order: kept even tokens (in ``unm_idx`` order), then all odd tokens in position order. Computed in
    float32 and cast back to t's dtype; merged sources are scaled by ``plan.src_weight`` before the reduce.
    """
    dtype = t.dtype
    t = t.float()
    src, dst = t[..., ::2, :], t[..., 1::2, :]
    b, _, c = src.shape
    unm = src.gather(dim=-2, index=plan.unm_idx.expand(b, -1, c))
    src = src.gather(dim=-2, index=plan.src_idx.expand(b, -1, c))
    if plan.src_weight is not None:
        src = src * plan.src_weight
    dst = dst.scatter_reduce(-2, plan.dst_idx.expand(b, -1, c), src, reduce=mode)
    return torch.cat([unm, dst], dim=1).to(dtype)


def merge_wavg(plan: MergePlan, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge. x: (B, N, C), size: (B, N, 1) or None (all ones).

    Returns (x', size'), with x'_d = (s_d x_d + sum_i w_i s_i x_i) / (s_d + sum_i w_i s_i). Sizes are float32.
    The per-sample max size cancels mathematically; it is kept because the official code rounds that way.
    The weighting, the sums and the division run in float32 whatever x's dtype (bf16 / fp16 under mixed precision:
    one rounding, at the end); for float32 x this is the official arithmetic, bit for bit.
    """
    if size is None:
        size = torch.ones_like(x[..., :1], dtype=torch.float32)
    dtype = x.dtype
    smax = size.amax(dim=-2, keepdim=True)
    x = merge_tokens(plan, x.float() * (size / smax).float(), mode="sum")
    size = merge_tokens(plan, size, mode="sum")
    x = x / (size / smax).float()
    return x.to(dtype), size


def even_gather(values: Tensor, idx: Tensor) -> Tensor:
    """values: (B, N, 1) per-token values -> (B, r, 1) values of the even tokens at idx (B, r, 1)."""
    return values[..., ::2, :].gather(dim=-2, index=idx)


@dataclass
class DropPlan:
    """Which tokens survive a drop (pruning, no merging). keep_idx: (B, N - r, 1) kept positions, ascending, so
    kept tokens stay in positional order. Dropped tokens vanish: nothing of them reaches the output."""

    keep_idx: Tensor


def drop_lowest(score: Tensor, r: int, protected: int = 0) -> DropPlan:
    """A plan dropping, per sample, the r tokens with the lowest score: (B, N, 1) or (B, N), any orderable dtype.

    Ties go to the earlier position (stable sort). The first ``protected`` tokens are never dropped.
    """
    with torch.no_grad():
        score = score.reshape(score.shape[0], -1)[:, protected:]
        order = torch.sort(score, dim=-1, stable=True)[1][:, r:] + protected
        prefix = torch.arange(protected, device=order.device).expand(order.shape[0], -1)
        keep_idx = torch.cat([prefix, order.sort(dim=-1)[0]], dim=1)
    return DropPlan(keep_idx=keep_idx[..., None])


def keep_tokens(plan: DropPlan, t: Tensor) -> Tensor:
    """Apply a drop plan to t: (B, N, C) -> (B, N - r, C), the kept rows unchanged and in positional order."""
    return t.gather(dim=-2, index=plan.keep_idx.expand(-1, -1, t.shape[-1]))
