"""Rows of different token counts: a merge step over padded (or packed) rows with a per-row r.

``MergeMethod.__call__`` comes here when ``MergeState.count`` is set, when the tokens are packed, or when r is a
per-row tensor / a ``RowBudget`` (threshold mode). Every row gets exactly the merges it gets alone: matching never
picks a padding token, row b removes its own r[b], and the result is repacked left (padding at the end of each row,
size 0) in the token order the row has alone (kept a tokens, then the b tokens: the even / odd split of a row is
the same padded or not, since padding only follows the real tokens).

Methods whose ``plan`` hands r straight to ``bipartite_soft_matching`` / ``drop_lowest`` (``row_budgets = True``)
plan all rows at once; any other method runs once per group of rows of the same (count, r), each group unpadded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .matching import DropPlan, MergePlan, RowBudget, keep_tokens
from .state import AttentionInfo, MergeState

if TYPE_CHECKING:
    from .methods import MergeMethod


def row_r(r: float | int | Tensor, count: Tensor, protected: int) -> Tensor:
    """(B,) tokens each row removes: a schedule entry (count or fraction of the row's tokens, as ``effective_r``) or
    a (B,) tensor, capped at (count - protected) // 2."""
    cap = (count - protected).clamp_min(0) // 2
    if isinstance(r, Tensor):
        want = r.to(device=count.device, dtype=torch.long)
    elif r < 1:
        want = (count.double() * r).long()
    else:
        want = torch.full_like(count, int(r))
    return torch.minimum(want.clamp_min(0), cap)


def row_slots(plan: MergePlan, count: Tensor, n: int) -> tuple[Tensor, Tensor | None, int, Tensor]:
    """Where each token of a RowBudget merge plan lands: (slot (B, n) int64 with ``width`` for padding, the weight
    of each token (B, n) float32 or None, width = the longest output row, the new count (B,))."""
    device = count.device
    batch, n_a, n_b = count.shape[0], (n + 1) // 2, n // 2
    real_a = 2 * torch.arange(n_a, device=device)[None] < count[:, None]
    real_b = 2 * torch.arange(n_b, device=device)[None] + 1 < count[:, None]
    src = plan.src_idx[..., 0]
    merged = torch.arange(src.shape[1], device=device)[None] < plan.rows[:, None]  # (B, R)
    is_src = torch.zeros(batch, n_a, dtype=torch.bool, device=device).scatter(1, src, merged)
    kept_a = real_a & ~is_src
    if plan.sorted_unmerged:
        slot_a = kept_a.long().cumsum(1) - 1
    else:
        order = torch.cat([src, plan.unm_idx[..., 0]], dim=1)  # the score order of the a tokens
        rank = kept_a.gather(1, order).long().cumsum(1) - 1
        slot_a = torch.empty_like(rank).scatter(1, order, rank)
    keep_a = kept_a.sum(1)
    new_count = keep_a + count // 2
    width = int(new_count.max())
    slot_a = torch.where(kept_a, slot_a, width)
    dst_slot = keep_a[:, None] + plan.dst_idx[..., 0]
    slot_a = slot_a.scatter(1, src, torch.where(merged, dst_slot, slot_a.gather(1, src)))
    slot_b = torch.where(real_b, keep_a[:, None] + torch.arange(n_b, device=device)[None], width)
    slot = torch.empty(batch, n, dtype=torch.long, device=device)
    slot[:, ::2], slot[:, 1::2] = slot_a, slot_b
    idle = plan.rows == 0  # a row that merges nothing keeps its order, as alone (no a / b regrouping)
    if bool(idle.any()):
        position = torch.arange(n, device=device)[None].expand(batch, n)
        slot = torch.where(idle[:, None], torch.where(position < count[:, None], position, width), slot)
    weight = None
    if plan.src_weight is not None:
        w = plan.src_weight[..., 0].float()
        weight_a = torch.ones(batch, n_a, device=device).scatter(1, src, torch.where(merged, w, 1.0))
        weight = torch.ones(batch, n, device=device)
        weight[:, ::2] = weight_a
    return slot, weight, width, new_count


def _reduce(slot: Tensor, width: int, values: Tensor, mode: str) -> Tensor:
    """values (B, n, C) reduced into (B, width, C) by slot ("sum" or "amax"; padding slot dropped)."""
    out = values.new_zeros(values.shape[0], width + 1, values.shape[-1])
    index = slot[..., None].expand(-1, -1, values.shape[-1])
    if mode == "sum":
        out = out.scatter_add(1, index, values)
    else:
        out = out.scatter_reduce(1, index, values, reduce=mode)
    return out[:, :width]


def merge_rows(plan: MergePlan, count: Tensor, x: Tensor, size: Tensor | None, merge_op: str = "mean"
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, int]:
    """Apply a RowBudget merge plan: x (B, n, C), size (B, n, 1) or None -> (x' (B, W, C), size' (B, W, 1) float32,
    new count (B,), slot, weight, W); the size-weighted average ("mean") or ToFu's MLERP, in float32."""
    slot, weight, width, new_count = row_slots(plan, count, x.shape[1])
    s = size.float() if size is not None else torch.ones_like(x[..., :1], dtype=torch.float32)
    w = s if weight is None else s * weight[..., None]
    xf = x.float()
    total = _reduce(slot, width, xf * w, "sum")
    size_out = _reduce(slot, width, w, "sum")
    out = total / size_out.clamp_min(torch.finfo(torch.float32).tiny)
    if merge_op == "mlerp":
        alive = (s > 0).float() * (1.0 if weight is None else weight[..., None])
        top = _reduce(slot, width, xf.norm(dim=-1, keepdim=True) * alive, "amax")
        members = _reduce(slot, width, alive, "sum")
        scaled = out / out.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) * top
        out = torch.where(members > 1, scaled, out)
    return out.to(x.dtype), size_out, new_count, slot, weight, width


def _zero_padding(t: Tensor, count: Tensor) -> Tensor:
    mask = torch.arange(t.shape[1], device=t.device)[None, :] < count[:, None]
    return t * mask[..., None].to(t.dtype)


def _sub_attention(attn: AttentionInfo | None, idx: Tensor, n: int, count: Tensor) -> AttentionInfo | None:
    """The attention of rows idx, unpadded to their n real tokens (probs renormalised over the real keys)."""
    if attn is None:
        return None
    probs = None
    if attn.probs is not None:
        probs = attn.probs[idx][..., :n, :n]
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    q = attn.q[idx][..., :n, :] if attn.q is not None else None
    k = attn.k[idx][..., :n, :] if attn.k is not None else None
    return AttentionInfo(probs=probs, q=q, k=k)


def _by_groups(method: MergeMethod, x: Tensor, state: MergeState, attn: AttentionInfo | None, count: Tensor,
               r: Tensor) -> tuple[Tensor, Tensor]:
    """Run the method's own (unpadded) step on each group of rows with the same (count, r) -> (x', new count)."""
    keys = torch.stack([count, r], 1).tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(tuple(key), []).append(row)
    new_count = count.clone()
    width = x.shape[1]
    out = x.new_zeros(x.shape[0], width, x.shape[-1])
    size = torch.zeros(x.shape[0], width, 1, device=x.device)
    source = shift = None
    for (n, rr), rows in groups.items():
        idx = torch.tensor(rows, device=x.device)
        sub = MergeState(trace_source=state.trace_source, proportional_attention=state.proportional_attention,
                         tokens_per_layer=state.tokens_per_layer, record_shift=state.record_shift, grid=None)
        sub.size = state.size[idx, :n] if state.size is not None else None
        sub.source = state.source[idx, :n] if state.source is not None else None
        sub.shift = state.shift[idx, :n] if state.shift is not None else None
        y = method(x[idx, :n], sub, _sub_attention(attn, idx, n, count), rr)  # unpadded rows: the usual step
        m = y.shape[1]
        new_count[idx] = m
        out[idx, :m] = y
        size[idx, :m] = sub.size if sub.size is not None else 1.0
        if sub.source is not None:
            source = source if source is not None else sub.source.new_zeros(x.shape[0], width, sub.source.shape[-1])
            source[idx, :m] = sub.source
        if sub.shift is not None:
            shift = shift if shift is not None else sub.shift.new_zeros(x.shape[0], width, 1)
            shift[idx, :m] = sub.shift
    width = int(new_count.max())
    state.size = size[:, :width]
    state.source = source[:, :width] if source is not None else None
    state.shift = shift[:, :width] if shift is not None else None
    return out[:, :width], new_count


def call_rows(method: MergeMethod, x: Tensor, state: MergeState, attn: AttentionInfo | None,
              r: float | int | Tensor | RowBudget) -> Tensor:
    """``MergeMethod.__call__`` for rows of different counts, packed rows or a per-row r: x (B, N, C) padded (or
    (1, T, C) packed) -> the same layout after the merge; state.count (and size, source, shift) follow."""
    packed = state.packed
    if packed:
        x = state.unpack(x)
        state.size = state.unpack(state.size) if state.size is not None else None
        state.shift = state.unpack(state.shift) if state.shift is not None else None
        if attn is not None and attn.q is not None:  # explicit probs come per row already (ops.attention)
            attn = AttentionInfo(probs=attn.probs, q=state.unpack_heads(attn.q), k=state.unpack_heads(attn.k))
        elif attn is not None and attn.k is not None:
            attn = AttentionInfo(probs=attn.probs, k=state.unpack_heads(attn.k))
    before = state.count
    count = state.count if state.count is not None else \
        torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    if isinstance(r, RowBudget):
        budget = r
        budget.count = count
        if budget.target is not None:
            budget.batch_total = int(row_r(budget.target, count, method.protected).sum())
        budget.r = row_r(budget.r if budget.r is not None else count, count, method.protected)
    else:
        budget = RowBudget(r=row_r(r, count, method.protected), count=count)
    dynamic = budget.threshold is not None or budget.batch_total is not None
    if dynamic or bool((budget.r > 0).any()):
        if method.row_budgets:
            state.count = count
            state.init_source(x)
            plan = method.plan(x, attn, budget, state)
            if isinstance(plan, DropPlan):
                new_count = plan.count
                x = _zero_padding(keep_tokens(plan, x), new_count)
                state.size = _zero_padding(keep_tokens(plan, state.size), new_count) if state.size is not None else \
                    _zero_padding(torch.ones_like(x[..., :1], dtype=torch.float32), new_count)
                state.shift = _zero_padding(keep_tokens(plan, state.shift), new_count) \
                    if state.shift is not None else None
                state.source = _zero_padding(keep_tokens(plan, state.source), new_count) \
                    if state.source is not None else None
            else:
                x, state.size, new_count, slot, weight, width = merge_rows(plan, count, x, state.size,
                                                                           getattr(method, "merge_op", "mean"))
                state.shift = None
                if state.source is not None:
                    src = state.source.float() * (weight[..., None] if weight is not None else 1.0)
                    state.source = _reduce(slot, width, src, "amax").to(state.source.dtype)
        elif dynamic:
            raise ValueError(f"threshold mode needs a method that merges by bipartite matching; {method.name!r} "
                             "plans with a fixed r")
        else:
            x, new_count = _by_groups(method, x, state, attn, count, budget.r)
            grouped = True  # the groups ran without a grid: none holds after them
        uniform = bool((budget.r == budget.r[0]).all()) and before is None and not dynamic and not grouped
        state.grid = method.grid_after(state.grid, int(budget.r[0])) if uniform else None
        state.count = new_count
        state.record_count(before)
    if packed:
        x = state.pack(x)
        state.size = state.pack(state.size) if state.size is not None else None
        state.shift = state.pack(state.shift) if state.shift is not None else None
    return x


__all__ = ["call_rows", "merge_rows", "row_r", "row_slots"]
