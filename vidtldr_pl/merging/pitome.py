"""PiToMe (Tran et al., NeurIPS 2024, "Accelerating Transformers with Spectrum-Preserving Token Merging").

Followed: hchautran/PiToMe, ``algo/pitome/merge.py`` (``pitome_vision``, ``pitome``, ``pitome_bsm``,
``merge_wavg``) and ``algo/pitome/patch/deit.py`` / ``mae.py`` (the margin per block); the same functions are in
Westlake-AI/OpenToMe ``opentome/tome/pitome.py``.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matching import MergePlan, bipartite_soft_matching, merge_tokens
from .methods import MergeMethod, matching_metric, register_method
from .rows import call_rows
from .schedule import RValue, effective_r
from .state import AttentionInfo, MergeState, TokenGrid

MATCHINGS = ("pitome", "bsm")


@dataclass
class OrderedPlan:
    """A merge in an order of the method's own: the non-prefix tokens taken in ``order`` (B, n) (indices after the
    prefix); the first ``front`` of them are kept as they are, the rest (``z``) go through ``plan`` (a ToMe-layout
    MergePlan over z: a = even, b = odd positions of z). Result: prefix, the front tokens, then plan's output."""

    order: Tensor
    front: int
    plan: MergePlan


def energy_scores(metric: Tensor, margin: float, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """metric: (B, n, C) -> (energy (B, n), cosine similarities (B, n, n)), in float32.

    energy_i = mean_j ELU(cos(m_i, m_j) - margin; alpha) over every token j (itself included): high for a token
    with many close neighbours (redundant), low (down to -alpha) for an isolated one (``pitome_vision``).
    """
    m = F.normalize(metric.float(), p=2, dim=-1)
    sim = m @ m.transpose(-1, -2)
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1), sim


@register_method
class PiToMe(MergeMethod):
    """PiToMe: rank the tokens by their energy on the key-similarity graph, merge among the most redundant,
    protect the isolated ones.

    Each block (r tokens to remove, n tokens after the protected prefix): energy as in ``energy_scores`` with this
    block's margin; tokens sorted by energy, highest first.
      matching "pitome" (their ``pitome``, the paper's algorithm): the 2r highest-energy tokens split alternately
        (1st, 3rd, ... -> A; 2nd, 4th, ... -> B); every A token merges into its most similar B token (size-weighted,
        ``merge_op``); the other n - 2r tokens (isolated: low energy) are kept untouched. Order out: prefix, the
        kept tokens (energy order), the B tokens.
      matching "bsm" (their ``pitome_bsm``): all tokens split alternately in energy order, then ToMe's bipartite
        matching merges the r best pairs. Their DeiT patch uses "bsm" in the first half of the blocks and "pitome"
        after, their MAE patch the reverse; pick one here.
    margin: a number (every block), or None: their per-block schedule 0.75 - 0.75 i / depth for block i (the
    blocks run so far); depth: the block count of that schedule (None: the encoder's, set by ``patch`` through
    ``for_encoder``; 12, ViT-B as in their models, when the method runs outside an encoder).
    alpha: the ELU's alpha (theirs: 1.0). metric: "keys" (head-mean keys, theirs) or "hidden".
    proportional_attention: False by default, as their patches (``prop_attn=False``). Rows of different counts run
    group by group (``merging.rows``). The grid is lost (merges cross frames) except on rows of one frame.
    """

    name = "pitome"
    needs_attention = True

    def __init__(self, margin: float | None = None, depth: int | None = None, alpha: float = 1.0, matching: str = "pitome",
                 metric: str = "keys", proportional_attention: bool = False, protected: int = 0,
                 merge_op: str = "mean") -> None:
        super().__init__(proportional_attention, protected, merge_op)
        if matching not in MATCHINGS:
            raise ValueError(f"unknown pitome matching {matching!r}; choose one of {MATCHINGS}")
        if metric not in ("keys", "hidden"):
            raise ValueError(f"pitome metric must be 'keys' or 'hidden', got {metric!r}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"pitome depth must be a positive number of blocks, got {depth!r}")
        if margin is not None and not -1.0 <= float(margin) <= 1.0:
            raise ValueError(f"pitome margin must be a cosine in [-1, 1] or None, got {margin!r}")
        self.margin, self.depth, self.alpha = margin, depth, float(alpha)
        self.matching, self.metric = matching, metric
        self.needs_attention = metric == "keys"

    def margin_at(self, layer: int) -> float:
        """The margin of block ``layer`` (0-based)."""
        return float(self.margin) if self.margin is not None else 0.75 - 0.75 * layer / (self.depth or 12)

    def for_encoder(self, encoder: nn.Module) -> "PiToMe":
        """This method with ``depth`` set to the encoder's block count when it was left None."""
        if self.depth is not None:
            return self
        bound = copy.copy(self)
        bound.depth = len(encoder.blocks)
        return bound

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> OrderedPlan:
        """x: (B, N, C) -> an OrderedPlan removing r tokens (applied by ``__call__``)."""
        metric = matching_metric(x, attn, self.metric, "pitome(metric='keys')")
        p = self.protected
        layer = len(state.tokens_per_layer) if state is not None else 0
        with torch.no_grad():
            energy, sim = energy_scores(metric[:, p:], self.margin_at(layer), self.alpha)
            order = torch.sort(energy, dim=-1, descending=True, stable=True)[1]
            if self.matching == "bsm":
                metric_z = metric[:, p:].gather(1, order[..., None].expand(-1, -1, metric.shape[-1]))
                return OrderedPlan(order, 0, bipartite_soft_matching(metric_z, r, sort_unmerged=False))
            a_idx, b_idx = order[:, : 2 * r : 2], order[:, 1 : 2 * r : 2]
            scores = sim.gather(1, a_idx[..., None].expand(-1, -1, sim.shape[-1]))
            scores = scores.gather(2, b_idx[:, None, :].expand(-1, r, -1))
            dst_idx = scores.argmax(dim=-1)[..., None]
            b = x.shape[0]
            src_idx = torch.arange(r, device=x.device).expand(b, r)[..., None]
            plan = MergePlan(src_idx=src_idx, dst_idx=dst_idx, unm_idx=src_idx[:, :0])
            order = torch.cat([order[:, 2 * r:], order[:, : 2 * r]], dim=1)
        return OrderedPlan(order, order.shape[1] - 2 * r, plan)

    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        """x: (B, N, C) -> (B, N - r', C); state's size / source follow, the grid is lost, the shift cleared."""
        if state.count is not None or state.packed or not isinstance(r, (int, float)):
            return call_rows(self, x, state, attn, r)  # each group of equal rows alone
        r_eff = effective_r(r, x.shape[1], self.protected)
        if r_eff == 0:
            return x
        state.init_source(x)
        op = self.plan(x, attn, r_eff, state)
        p, f = self.protected, op.front
        size = state.size if state.size is not None else torch.ones_like(x[..., :1], dtype=torch.float32)

        def split(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            body = t[:, p:].gather(1, op.order[..., None].expand(-1, -1, t.shape[-1]))
            return t[:, :p], body[:, :f], body[:, f:]

        head, front, z = split(x)
        size_head, size_front, size_z = split(size)
        z, size_z = self.merge_average(op.plan, z, size_z)
        if state.source is not None:
            src_head, src_front, src_z = split(state.source)
            state.source = torch.cat([src_head, src_front, merge_tokens(op.plan, src_z, mode="amax")], dim=1)
        state.size = torch.cat([size_head, size_front, size_z], dim=1)
        state.shift = None
        state.grid = self.grid_after(state.grid, r_eff)
        return torch.cat([head, front, z], dim=1)

    def grid_after(self, grid: TokenGrid | None, r: int) -> TokenGrid | None:
        """Rows of one frame (frame-wise encoders) keep their grid (S - r tokens); merges across frames lose it."""
        if grid is not None and (grid.framewise or grid.frames == 1):
            return replace(grid, per_frame=grid.per_frame - r)
        return None

    def __repr__(self) -> str:
        return (f"PiToMe(margin={self.margin}, depth={self.depth}, alpha={self.alpha}, matching={self.matching!r}, "
                f"metric={self.metric!r}, merge_op={self.merge_op!r}, protected={self.protected})")


__all__ = ["MATCHINGS", "OrderedPlan", "PiToMe", "energy_scores"]
