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
    rows: (B,) per-row merge counts when rows merge different numbers (a ``RowBudget`` plan, applied by
    ``merging.rows``): row b merges src_idx[b, :rows[b]] only, src_idx[b, rows[b]:] stay as unm_idx does;
    sorted_unmerged: whether the kept a tokens keep positional order (else the score order of src_idx, unm_idx).
    """

    src_idx: Tensor
    dst_idx: Tensor
    unm_idx: Tensor
    src_weight: Tensor | None = None
    rows: Tensor | None = None
    sorted_unmerged: bool = True


@dataclass
class RowBudget:
    """Per-row token budgets for rows of different token counts (padding at the end of each row).

    r: (B,) int64 tokens each row removes at most (its cap); count: (B,) real tokens of each row (both filled in
    by ``merging.rows`` when None: r then is the most a row can merge). threshold: merge every pair whose score is
    above it (DyMU), up to r; target: a schedule entry whose per-row counts sum to batch_total: merge the
    batch_total best pairs of the whole batch (DyMU's batch-level calibration), up to r per row. ``observed`` after
    the matching: the score of the best pair left unmerged (the batch-level threshold), set with batch_total.
    """

    r: Tensor | None
    count: Tensor | None
    threshold: float | None = None
    target: float | int | None = None
    batch_total: int | None = None
    observed: float | None = None

    def padding(self, width: int) -> Tensor:
        """(B, width) True at padding positions."""
        return torch.arange(width, device=self.count.device)[None, :] >= self.count[:, None]

    def resolve(self, score: Tensor) -> Tensor:
        """score: (B, Na) each candidate's best score (-inf where it may not merge) -> (B,) merges per row."""
        if self.threshold is not None:
            return torch.minimum((score > self.threshold).sum(dim=-1), self.r)
        if self.batch_total is None:
            return self.r
        flat = score.flatten()
        order = flat.sort(descending=True, stable=True)[1]
        total = min(self.batch_total, int(torch.isfinite(flat).sum()))
        rows = torch.bincount(order[:total] // score.shape[1], minlength=score.shape[0])
        rows = torch.minimum(rows, self.r)
        if total < flat.numel() and torch.isfinite(flat[order[total]]):
            self.observed = float(flat[order[total]])
        return rows


#: the most similarity scores one matching step holds at once (B x rows x N/2, float32: 16 MiB); larger inputs are
#: matched in row chunks (``bipartite_soft_matching``'s ``max_scores``)
MAX_SCORES = 2**22


def best_matches(a: Tensor, b: Tensor, protected: int = 0, affine_scores: bool = False,
                 max_scores: int | None | str = "auto", pad_a: Tensor | None = None,
                 pad_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For every row of a (B, Na, C) its best match in b (B, Nb, C) by cosine: (score (B, Na), index (B, Na)).

    The (B, Na, Nb) similarity matrix is never held whole when it has more than ``max_scores`` entries: rows go in
    chunks, each reduced to its row maximum (None: one chunk). Each row's scores are computed and reduced exactly as
    in one piece (the same dot products, the same first index on ties); a's rows are L2-normalised chunk by chunk,
    so no normalised copy of the whole input is held either. The first ``(protected + 1) // 2`` rows and
    ``protected // 2`` columns (the prefix tokens of the interleaved a / b split) score -inf. max_scores "auto":
    the module's ``MAX_SCORES`` when called (None there, too, holds the matrix whole). pad_a (B, Na) / pad_b
    (B, Nb): padding tokens (rows of different counts), scored -inf as rows and as columns.
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
        if pad_a is not None:
            scores = scores.masked_fill(pad_a[:, start:start + step, None] | pad_b[:, None, :], -math.inf)
        chunk_max, chunk_idx = scores.max(dim=-1)
        best.append(chunk_max)
        index.append(chunk_idx)
    if len(best) == 1:
        return best[0], index[0]
    return torch.cat(best, dim=-1), torch.cat(index, dim=-1)


def bipartite_soft_matching(
    metric: Tensor,
    r: int | RowBudget,
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
    once (``best_matches``: row chunks above it, the same plan). r a ``RowBudget``: rows of different counts
    (padding never matches) and per-row r, a plan with ``rows`` set (``merging.rows`` applies it).
    """
    if isinstance(r, RowBudget):
        return _row_matching(metric, r, protected, sort_unmerged, affine_scores, max_scores)
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


def _row_matching(metric: Tensor, budget: RowBudget, protected: int, sort_unmerged: bool, affine_scores: bool,
                  max_scores: int | None | str) -> MergePlan:
    """``bipartite_soft_matching`` for a RowBudget: the same scores with padding at -inf, per-row counts."""
    with torch.no_grad():
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        pad = budget.padding(metric.shape[-2])
        node_max, node_idx = best_matches(a, b, protected, affine_scores, max_scores, pad[:, ::2], pad[:, 1::2])
        rows = budget.resolve(node_max)
        most = int(rows.max()) if rows.numel() else 0
        edge_idx = node_max.sort(dim=-1, descending=True, stable=True)[1][..., None]
        src_idx, unm_idx = edge_idx[..., :most, :], edge_idx[..., most:, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    return MergePlan(src_idx=src_idx, dst_idx=dst_idx, unm_idx=unm_idx, rows=rows, sorted_unmerged=sort_unmerged)


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


#: the merge operators a merging method can use (``MergeMethod(merge_op=...)``)
MERGE_OPS = ("mean", "mlerp")


def merge_mlerp(plan: MergePlan, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """ToFu's MLERP merge (Kim et al., WACV 2024): the size-weighted average of each merged group, rescaled to the
    largest norm among the group's tokens, so merging does not shrink feature norms. x: (B, N, C), size: (B, N, 1)
    or None (all ones). Returns (x', size'), size' as ``merge_wavg``'s.

    x'_d = avg_d / ||avg_d|| * max_{i in group} ||x_i||, avg_d = (s_d x_d + sum_i w_i s_i x_i) / (s_d + sum_i w_i s_i);
    tokens that merged with nothing are ``merge_wavg``'s output unchanged. A token of size 0 (a dropped destination,
    padding) and a source of weight 0 (``plan.src_weight``) do not enter the maximum; a source of weight w enters
    with w ||x_i||. Everything runs in float32, one rounding at the end.
    OpenToMe's ``opentome/timm/tofu.py`` mode "tofu" (merge in ``opentome/tome/tome.py``) takes the same maximum of
    norms but an unweighted mean, and divides by the destination's norm before the merge; here the average is
    divided by its own norm, so ||x'_d|| = max ||x_i|| exactly (the definition's norm preservation).
    """
    if size is None:
        size = torch.ones_like(x[..., :1], dtype=torch.float32)
    dtype = x.dtype
    xf = x.float()
    smax = size.amax(dim=-2, keepdim=True)
    avg = merge_tokens(plan, xf * (size / smax).float(), mode="sum")
    size_out = merge_tokens(plan, size, mode="sum")
    avg = avg / (size_out / smax).float()
    norms = xf.norm(dim=-1, keepdim=True) * (size > 0).float()
    top = merge_tokens(plan, norms, mode="amax")
    members = merge_tokens(plan, (size > 0).float(), mode="sum")  # > 1 only where a group of several merged
    scaled = avg / avg.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) * top
    out = torch.where(members > 1, scaled, avg)
    return out.to(dtype), size_out


def even_gather(values: Tensor, idx: Tensor) -> Tensor:
    """values: (B, N, 1) per-token values -> (B, r, 1) values of the even tokens at idx (B, r, 1)."""
    return values[..., ::2, :].gather(dim=-2, index=idx)


@dataclass
class DropPlan:
    """Which tokens survive a drop (pruning, no merging). keep_idx: (B, N - r, 1) kept positions, ascending, so
    kept tokens stay in positional order. Dropped tokens vanish: nothing of them reaches the output. count: (B,)
    kept tokens per row when rows keep different numbers (keep_idx[b, count[b]:] is padding)."""

    keep_idx: Tensor
    count: Tensor | None = None


def drop_lowest(score: Tensor, r: int | RowBudget, protected: int = 0) -> DropPlan:
    """A plan dropping, per sample, the r tokens with the lowest score: (B, N, 1) or (B, N), any orderable dtype.

    Ties go to the earlier position (stable sort). The first ``protected`` tokens are never dropped. r a
    ``RowBudget``: row b drops r[b] of its count[b] real tokens, padding is never kept (plan.count set).
    """
    if isinstance(r, RowBudget):
        return _row_drop(score, r, protected)
    with torch.no_grad():
        score = score.reshape(score.shape[0], -1)[:, protected:]
        order = torch.sort(score, dim=-1, stable=True)[1][:, r:] + protected
        prefix = torch.arange(protected, device=order.device).expand(order.shape[0], -1)
        keep_idx = torch.cat([prefix, order.sort(dim=-1)[0]], dim=1)
    return DropPlan(keep_idx=keep_idx[..., None])


def _row_drop(score: Tensor, budget: RowBudget, protected: int) -> DropPlan:
    """``drop_lowest`` for a RowBudget (no thresholds: those need a matching)."""
    if budget.threshold is not None or budget.batch_total is not None:
        raise ValueError("threshold mode needs a method that merges by bipartite matching, not a drop method")
    with torch.no_grad():
        score = score.reshape(score.shape[0], -1)
        batch, n = score.shape
        pad = budget.padding(n)
        order = torch.sort(score[:, protected:], dim=-1, stable=True)[1] + protected
        order = order.gather(1, torch.sort(pad.gather(1, order).to(torch.int8), dim=-1, stable=True)[1])
        rank = torch.arange(n - protected, device=score.device)[None, :]
        kept = (rank >= budget.r[:, None]) & (rank < (budget.count - protected)[:, None])
        keep = torch.ones(batch, n, dtype=torch.bool, device=score.device).scatter(1, order, kept)
        count = budget.count - budget.r
        keep_idx = torch.sort((~keep).to(torch.int8), dim=-1, stable=True)[1][:, : int(count.max())]
    return DropPlan(keep_idx=keep_idx[..., None], count=count)


def keep_tokens(plan: DropPlan, t: Tensor) -> Tensor:
    """Apply a drop plan to t: (B, N, C) -> (B, N - r, C), the kept rows unchanged and in positional order."""
    return t.gather(dim=-2, index=plan.keep_idx.expand(-1, -1, t.shape[-1]))
