"""ToMe's video modes from "Video, how do your tokens merge?" (Pollard and Wray, CVPR-W 2025), one method class.

Followed: sjpollard/video-how-do-your-tokens-merge @21261a9, ``tome/merge.py`` (``bipartite_soft_matching``,
``bipartite_soft_matching_drop``, ``bipartite_soft_matching_hybrid``, ``merge_wavg``) and ``tome/patch/videomae.py``
(joint space-time rows) / ``tome/patch/timesformer.py`` (rows regrouped per frame, ``(b t) p m``).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .matching import DropPlan, MergePlan, best_matches, bipartite_soft_matching
from .methods import MergeMethod, matching_metric, random_keys, register_method
from .regroup import from_frames, from_tubes, keep_groups, merge_groups, to_frames, to_tubes
from .rows import call_rows
from .schedule import RValue, effective_r
from .state import AttentionInfo, MergeState, TokenGrid

MODES = ("merge", "drop", "random_drop", "hybrid")
NEIGHBOURHOODS = ("joint", "spatial", "temporal")


@register_method
class VideoToMe(MergeMethod):
    """ToMe bipartite matching on keys with the video study's modes and matching neighbourhoods.

    mode:
      "merge": ToMe: the r best-matched even tokens (a) are averaged into their most similar odd token (b),
        size-weighted (``merge_op``).
      "drop": the same matching, but the r matched a tokens are dropped instead of averaged (their
        ``bipartite_soft_matching_drop``); kept tokens in their order: unmatched a, then every b.
      "random_drop": r random a tokens are dropped (their mode "random_drop": random scores in place of the
        similarities); the draw hashes (seed, block, group, position) as ``RandomDrop`` does.
      "hybrid": merge, except that a destination whose matched pair scores (cosine of the keys) below
        ``threshold`` is dropped and replaced by its source(s) (their ``bipartite_soft_matching_hybrid``: the
        destination is multiplied by 0 before the sources are summed in; its size and source go with it).
        threshold: their configs use 0.8 (VideoMAE) and 0.4 (ViViT); their default -1 never drops (= "merge").
    neighbourhood (where a token looks for its match; ``MergeState.grid`` says how tokens tile the video):
      "joint": ToMe over all the tokens of a row (their VideoMAE / ViViT patches). With mode "merge" this is
        ``ToMe`` exactly.
      "spatial": within each frame: the row is regrouped per frame and each frame loses r // T tokens (their
        TimeSformer / Motionformer patches, ``(b t) p m``), so only multiples of T are removed
        (``tokens_removed``) and the grid stays (S -> S - r // T per frame). Rows of one frame (frame-wise encoders,
        models without a grid such as foreign image models): the whole row, as "joint", the grid kept.
      "temporal": within each spatial position across the frames (the tube of the token with the same index in
        every frame: the same patch, as long as no spatial merge reorders a frame): each of the S positions loses
        r // S tokens (at most T // 2), the grid stays (T -> T - r // S). Not in the authors' code (their
        neighbourhoods are joint and per-frame); this is its temporal counterpart. A row of one frame or without
        a grid is a ValueError.
    The prefix (CLS) never merges: protected in "joint" (as ToMe), set aside in the per-frame / per-position groups
    (as their TimeSformer patch). Output order in every group as theirs: kept a tokens, then the b tokens.
    seed: random_drop's draw. metric: "keys" (head-mean keys, theirs) or "hidden".
    Rows of different counts (``MergeState.count``) run group by group without a grid (``merging.rows``).
    """

    name = "tome_video"
    needs_attention = True

    def __init__(self, mode: str = "merge", neighbourhood: str = "joint", threshold: float = 0.8,
                 metric: str = "keys", seed: int = 0, proportional_attention: bool = True, protected: int = 0,
                 merge_op: str = "mean") -> None:
        super().__init__(proportional_attention, protected, merge_op)
        if mode not in MODES:
            raise ValueError(f"unknown tome_video mode {mode!r}; choose one of {MODES}")
        if neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"unknown tome_video neighbourhood {neighbourhood!r}; choose one of {NEIGHBOURHOODS}")
        if metric not in ("keys", "hidden"):
            raise ValueError(f"tome_video metric must be 'keys' or 'hidden', got {metric!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"tome_video seed must be an integer, got {seed!r}")
        self.mode, self.neighbourhood, self.threshold = mode, neighbourhood, float(threshold)
        self.metric, self.seed = metric, seed
        self.needs_attention = metric == "keys" and mode != "random_drop"

    # ------------------------------------------------------------------ layout and counts
    def layout(self, grid: TokenGrid | None) -> str:
        """The groups this method matches in for tokens tiled as grid: "joint", "spatial" or "temporal"."""
        if self.neighbourhood == "joint":
            return "joint"
        one_frame = grid is None or grid.framewise or grid.frames == 1
        if self.neighbourhood == "temporal" and one_frame:
            why = "the encoder set no token grid (or it was lost)" if grid is None else "each row is one frame"
            raise ValueError(f"tome_video neighbourhood 'temporal' needs rows of several frames: {why}")
        return "joint" if one_frame else self.neighbourhood

    def tokens_removed(self, r: int, grid: TokenGrid | None) -> int:
        """r for "joint"; T x (r // T) for "spatial" (S x (r // S) for "temporal"), each group at most half."""
        layout = self.layout(grid)
        if layout == "spatial":
            return min(r // grid.frames, grid.per_frame // 2) * grid.frames
        if layout == "temporal":
            return min(r // grid.per_frame, grid.frames // 2) * grid.per_frame
        return r

    def grid_after(self, grid: TokenGrid | None, r: int) -> TokenGrid | None:
        """Spatial: S - r // T per frame; temporal: T - r // S frames; joint: lost (None), except on one-frame rows."""
        if grid is None:
            return None
        removed = self.tokens_removed(r, grid)
        if grid.framewise or grid.frames == 1:
            return replace(grid, per_frame=grid.per_frame - removed)
        layout = self.layout(grid)
        if layout == "spatial":
            return replace(grid, per_frame=grid.per_frame - removed // grid.frames)
        if layout == "temporal":
            return replace(grid, frames=grid.frames - removed // grid.per_frame)
        return None

    # ------------------------------------------------------------------ plans
    def _metric(self, x: Tensor, attn: AttentionInfo | None) -> Tensor:
        return matching_metric(x, attn, self.metric, "tome_video(metric='keys')")

    def match(self, metric: Tensor, r: int, protected: int, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """metric: (G, n, C) -> (src_idx (G, r, 1), dst_idx (G, r, 1), unm_idx (G, na - r, 1), src_score (G, r)):
        the r a tokens matched best (random ones for "random_drop"), their best b, the rest of a (ToMe's order:
        by score, positional with a prefix)."""
        with torch.no_grad():
            if self.mode == "random_drop":
                keys = random_keys(self.seed, layer, metric.shape[0], metric.shape[1], metric.device)[:, ::2]
                score = keys.float()
                score[:, : (protected + 1) // 2] = -1.0
                node_idx = torch.zeros_like(keys)
            else:
                score, node_idx = best_matches(metric[..., ::2, :], metric[..., 1::2, :], protected)
            edge_idx = score.argsort(dim=-1, descending=True)[..., None]
            unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
            if protected > 0:
                unm_idx = unm_idx.sort(dim=-2)[0]
            dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
            src_score = score.gather(-1, src_idx[..., 0])
        return src_idx, dst_idx, unm_idx, src_score

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int,
             state: MergeState | None = None) -> MergePlan | DropPlan:
        """The plan on whole rows (neighbourhood "joint"): ToMe's MergePlan ("merge"), or a DropPlan keeping the
        unmatched a tokens then every b ("drop", "random_drop"). "hybrid" has no plan of the two kinds: ``__call__``
        applies it."""
        if self.mode == "merge":
            return bipartite_soft_matching(self._metric(x, attn), r, protected=self.protected,
                                           sort_unmerged=self.protected > 0)
        if self.mode == "hybrid":
            raise ValueError("tome_video mode 'hybrid' is applied by calling the method, it has no single plan")
        layer = len(state.tokens_per_layer) if state is not None else 0
        metric = x if self.mode == "random_drop" else self._metric(x, attn)
        _, _, unm_idx, _ = self.match(metric, r, self.protected, layer)
        return DropPlan(keep_idx=_keep_index(unm_idx, x.shape[1]))

    # ------------------------------------------------------------------ apply
    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        """x: (B, N, C) -> (B, N - removed, C); state's size / source / grid follow (shift cleared). Rows of
        different counts, packed rows or an r per row go through ``merging.rows.call_rows`` (each group of equal
        rows alone, without a grid: "spatial" is then "joint", "temporal" a ValueError)."""
        if state.count is not None or state.packed or not isinstance(r, (int, float)):
            return call_rows(self, x, state, attn, r)
        r_eff = effective_r(r, x.shape[1], self.protected)
        if r_eff == 0:
            return x
        layout = self.layout(state.grid)
        if layout == "joint" and self.mode == "merge":
            return super().__call__(x, state, attn, r)  # ToMe, with every feature of the shared path
        grid = state.grid
        if grid is not None and layout != "joint" and grid.tokens() != x.shape[1]:
            raise ValueError(f"tome_video: the token grid ({grid}) does not tile the {x.shape[1]} tokens")
        removed = self.tokens_removed(r_eff, grid)
        if removed == 0:
            return x
        state.init_source(x)
        metric = x if self.mode == "random_drop" else self._metric(x, attn)
        if layout == "joint":
            prefix, per_group = 0, removed
            group, ungroup = (lambda t: t), (lambda g, head: g)
            protected = self.protected
        else:
            prefix, protected = grid.prefix, 0
            frames = grid.frames
            group = (lambda t: to_frames(t, prefix, frames)) if layout == "spatial" else (
                lambda t: to_tubes(t, prefix, frames))
            ungroup = from_frames if layout == "spatial" else from_tubes
            per_group = removed // (frames if layout == "spatial" else grid.per_frame)
        heads = [None if t is None else t[:, :prefix] for t in (x, state.size, state.source)]
        xg, sg, srcg = (None if t is None else group(t) for t in (x, state.size, state.source))
        layer = len(state.tokens_per_layer)
        src_idx, dst_idx, unm_idx, src_score = self.match(group(metric), per_group, protected, layer)
        if self.mode in ("drop", "random_drop"):
            xg, sg, srcg = keep_groups(_keep_index(unm_idx, xg.shape[1]), xg, sg, srcg)
        else:
            keep_b = None
            if self.mode == "hybrid":
                nb = xg.shape[1] // 2
                ok = (src_score >= self.threshold).float()[..., None]
                keep_b = torch.ones(xg.shape[0], nb, 1, device=x.device).scatter_reduce(-2, dst_idx, ok, reduce="prod")
            plan = MergePlan(src_idx=src_idx, dst_idx=dst_idx, unm_idx=unm_idx)
            xg, sg, srcg = merge_groups(plan, self.merge_average, xg, sg, srcg, keep_b)
            if heads[1] is None:
                heads[1] = torch.ones_like(x[:, :prefix, :1], dtype=torch.float32)
        x = ungroup(xg, heads[0])
        state.size = None if sg is None else ungroup(sg, heads[1])
        state.source = None if srcg is None else ungroup(srcg, heads[2])
        state.shift = None
        state.grid = self.grid_after(grid, r_eff)
        return x

    def __repr__(self) -> str:
        return (f"VideoToMe(mode={self.mode!r}, neighbourhood={self.neighbourhood!r}, threshold={self.threshold}, "
                f"metric={self.metric!r}, merge_op={self.merge_op!r}, protected={self.protected})")


def _keep_index(unm_idx: Tensor, n: int) -> Tensor:
    """Positions kept by a drop of the matched a tokens: the unmatched a (2 x unm_idx), then every b (odd)."""
    g = unm_idx.shape[0]
    odd = torch.arange(1, n, 2, device=unm_idx.device).expand(g, -1)[..., None]
    return torch.cat([2 * unm_idx, odd], dim=1)


__all__ = ["MODES", "NEIGHBOURHOODS", "VideoToMe"]
