"""STIM-TM's temporal step (arXiv 2509.23672, xjiangmed/STIM-TM ``ToMe/merge_temporal.py``): merge spatially
corresponding tokens of the most similar adjacent frames, each source weighted by its saliency.

STIM-TM works on a TimeSformer grid (B, S positions, T frames): per position, one round merges the frame most
similar (key cosine) to its predecessor into that predecessor, the source's weight being its saliency (negative
attention entropy, min-max over the frames of its position); r rounds leave T - r frames per position. The token
value is the size-weighted mean (x_d s_d + w x_s s_s) / (s_d + w s_s), the size s_d + w s_s (their ``merge_wavg``
with the weighted merge), the merged key the sum of the two keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .matching import MergePlan, bipartite_soft_matching, merge_tokens, merge_wavg
from .methods import MergeMethod, head_mean_keys, register_method
from .saliency import check_saliency_backend, raw_saliency
from .schedule import RValue, effective_r
from .state import AttentionInfo, MergeState, TokenGrid


def stim_saliency(neg_entropy: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, S, T) negative entropies -> STIM-TM's source weights: min-max over the T frames of each position."""
    score = neg_entropy - neg_entropy.amin(dim=-1, keepdim=True)
    return score / (score.amax(dim=-1, keepdim=True) + eps)


def merge_round(cols: dict[str, Tensor], weighted: bool) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One STIM-TM round on columns (B, S, T, .): per position, frame j + 1 merges into frame j, j the most similar
    adjacent pair by the cosine of the keys "m". cols: "m" keys, "xs" size-weighted values x * s, "s" sizes,
    "w" source weights (summed on merge), optional "src" sources (union). Returns (columns with T - 1 frames,
    j (B, S, 1), the pair's similarity (B, S))."""
    m = cols["m"]
    b, s, t, _ = m.shape
    sim = F.cosine_similarity(m[:, :, :-1, :], m[:, :, 1:, :], dim=-1)  # (B, S, T - 1)
    best, j = torch.max(sim, dim=2, keepdim=True)
    src_idx = j + 1
    frames = torch.arange(t - 1, device=m.device)[None, None, :]
    dst_idx = frames + (frames > j).long()  # every frame but j + 1 (no boolean indexing: meta / compile friendly)
    weight = cols["w"].gather(2, src_idx[..., None])  # (B, S, 1, 1)
    out = {}
    for key, v in cols.items():
        c = v.shape[-1]
        src = v.gather(2, src_idx[..., None].expand(-1, -1, -1, c))
        dst = v.gather(2, dst_idx[..., None].expand(-1, -1, -1, c))
        at = j[..., None].expand(-1, -1, -1, c)
        if key == "src":
            out[key] = dst.scatter_reduce(2, at, src, reduce="amax")
        elif key in ("xs", "s") and weighted:
            out[key] = dst.scatter_add(2, at, src * weight)
        else:
            out[key] = dst.scatter_add(2, at, src)
    return out, j, best[..., 0]


@register_method
class STIMTemporal(MergeMethod):
    """STIM-TM's temporal step on our token layouts (MergeState.grid, recorded by the encoder).

    Joint rows (UMT, VideoMAE: T frames of S tokens, frame-major): the official step. r // S rounds on every
    position, the tokens laid out again frame-major with T - r // S frames (frame t' of a position: its t'-th
    remaining token, as STIM-TM lays them out), so the grid stays. The r % S tokens left over: one more round
    at the r % S positions whose best adjacent pair is most similar; the row then removes exactly r (the
    schedule's counts hold) and the grid is lost (positions hold different numbers of frames).

    Frame-wise rows (ViFi-CLIP: the batch rows are frames B x T; every row must keep the same count): a merge
    moves a token out of its frame's row, so every frame gives exactly r tokens to a neighbour, merged into the
    token at the same row index (the spatially corresponding patch while rows hold their patches in order; after
    a merge, the i-th remaining token): frames 0..T-2 to the next frame, their r most similar tokens among those
    not receiving a merge; the last frame to frame T-2, its r most similar among those whose partner stays. Every
    destination survives (no chains), every row loses r, the grid stays (per_frame - r). Whole-frame merges
    would change the number of rows the encoder returns, so they are not used. Traced sources index each row's
    own frame: a destination's source does not list the neighbour's patch it absorbed.

    No grid, one frame, or fewer than two frames: no temporal neighbour; the step falls back to ToMe's bipartite
    merge on the keys (STIM-TM's spatial step is ToMe's), unweighted.

    weighted: weight sources by their saliency (STIM-TM: always): the negative entropy of the token's
    head-mean attention row (the temporal attention in TimeSformer; the joint or per-frame attention here),
    min-max over the frames of its position (eps 1e-6). chunk_size / saliency_backend: how that entropy is
    computed under fused attention (``saliency.negative_entropy_from_qk``).
    """

    name = "stim_temporal"
    needs_attention = True

    def __init__(self, weighted: bool = True, chunk_size: int = 512, saliency_backend: str = "auto",
                 proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if not isinstance(weighted, bool):
            raise ValueError(f"stim_temporal weighted must be true or false, got {weighted!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"stim_temporal chunk_size must be a positive number of queries, got {chunk_size!r}")
        self.weighted = weighted
        self.chunk_size = chunk_size
        self.saliency_backend = check_saliency_backend(saliency_backend)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> MergePlan:
        """The ToMe plan of the no-grid fallback (the temporal merges are built in ``__call__``)."""
        return bipartite_soft_matching(self._keys(attn), r, protected=self.protected, sort_unmerged=True)

    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        """x: (rows, N, C) -> (rows, N - r', C), updating size / source / shift / grid."""
        if self.per_row(state, r):
            return super().__call__(x, state, attn, r)  # rows of different counts: the base runs this step per group
        rows, n, c = x.shape
        r_eff = effective_r(r, n, self.protected)
        if r_eff == 0:
            return x
        state.init_source(x)
        grid = state.grid
        if grid is None or grid.frames < 2 or grid.prefix != self.protected or grid.tokens() != n or (
                grid.framewise and rows % grid.frames):
            state.grid = None
            plan = self.plan(x, attn, r_eff, state)
            x, state.size = merge_wavg(plan, x, state.size)
            state.shift = None
            if state.source is not None:
                state.source = merge_tokens(plan, state.source, mode="amax")
            return x
        p = self.protected
        size = state.size if state.size is not None else x.new_ones(rows, n, 1, dtype=torch.float32)
        per_token = {"m": self._keys(attn).float(), "xs": x.float() * size, "s": size,
                     "w": self._saliency(attn, rows, n)}
        if state.source is not None:
            per_token["src"] = state.source
        prefix = {k: v[:, :p] for k, v in per_token.items()}
        body = {k: v[:, p:] for k, v in per_token.items()}
        if grid.framewise:
            merged = self._framewise(body, grid, r_eff)
            new_grid = TokenGrid(grid.frames, grid.per_frame - r_eff, p, True)
        else:
            merged, new_grid = self._joint(body, grid, r_eff)
        out = {k: torch.cat([prefix[k], merged[k]], dim=1) for k in merged}
        state.size = out["s"]
        state.shift = None  # merged tokens have no shift of their own
        if state.source is not None:
            state.source = out["src"]
        state.grid = new_grid
        return (out["xs"] / out["s"]).to(x.dtype)

    def grid_after(self, grid: TokenGrid | None, r: int) -> TokenGrid | None:
        if grid is None or grid.frames < 2 or grid.prefix != self.protected:
            return None
        if grid.framewise:
            return TokenGrid(grid.frames, grid.per_frame - r, grid.prefix, True)
        return TokenGrid(grid.frames - r // grid.per_frame, grid.per_frame, grid.prefix) if r % grid.per_frame == 0 \
            else None

    # ------------------------------------------------------------------------------------------------ helpers
    def _keys(self, attn: AttentionInfo | None) -> Tensor:
        return head_mean_keys(attn, "stim_temporal")

    def _saliency(self, attn: AttentionInfo | None, rows: int, n: int) -> Tensor:
        """(rows, N, 1) float32 negative entropy of each token's head-mean attention row (weighted), else ones."""
        if not self.weighted:
            return torch.ones(rows, n, 1, device=attn.k.device)
        return raw_saliency(attn, self.chunk_size, self.saliency_backend, zero_safe=True).float()

    def _joint(self, body: dict[str, Tensor], grid: TokenGrid, r: int) -> tuple[dict[str, Tensor], TokenGrid | None]:
        """Rows (B, T x S, .) frame-major -> merged rows (B, T x S - r, .) and the grid after."""
        t, s = grid.frames, grid.per_frame
        cols = {k: v.unflatten(1, (t, s)).transpose(1, 2) for k, v in body.items()}  # (B, S, T, .)
        if self.weighted:
            cols["w"] = stim_saliency(cols["w"][..., 0])[..., None]
        for _ in range(r // s):
            cols, _, _ = merge_round(cols, self.weighted)
        left = r % s
        frames = cols["m"].shape[2]
        if left:
            merged, _, best = merge_round(cols, self.weighted)
            chosen = torch.zeros_like(best, dtype=torch.bool).scatter_(1, best.topk(left, dim=1)[1], True)  # (B, S)
            pick = chosen[..., None, None]
            cols = {k: torch.where(pick, torch.cat([merged[k], v[:, :, -1:]], dim=2), v) for k, v in cols.items()}
        flat = {k: v.transpose(1, 2).flatten(1, 2) for k, v in cols.items()}  # frame-major (B, frames x S, .)
        if not left:
            return flat, TokenGrid(frames, s, grid.prefix)
        last = torch.arange(frames, device=chosen.device)[None, :, None] == frames - 1
        valid = ~(chosen[:, None, :] & last).flatten(1)  # (B, frames x S): the chosen positions' last slot is void
        keep = torch.sort((~valid).to(torch.int8), dim=1, stable=True)[1][:, : valid.shape[1] - left]
        return {k: v.gather(1, keep[..., None].expand(-1, -1, v.shape[-1])) for k, v in flat.items()}, None

    def _framewise(self, body: dict[str, Tensor], grid: TokenGrid, r: int) -> dict[str, Tensor]:
        """Frame rows (B x T, S, .) -> (B x T, S - r, .): every frame gives r tokens to a neighbour (class doc)."""
        t, s = grid.frames, grid.per_frame
        vids = {k: v.unflatten(0, (-1, t)) for k, v in body.items()}  # (B, T, S, .)
        b = vids["m"].shape[0]
        sim = F.cosine_similarity(vids["m"][:, :-1], vids["m"][:, 1:], dim=-1)  # (B, T - 1, S)
        if self.weighted:
            vids["w"] = stim_saliency(vids["w"][..., 0].transpose(1, 2)).transpose(1, 2)[..., None]
        sources, partners = [], []
        taken = torch.zeros(b, s, dtype=torch.bool, device=sim.device)  # positions of this frame receiving a merge
        for frame in range(t - 1):
            src = sim[:, frame].masked_fill(taken, float("-inf")).topk(r, dim=1)[1]
            sources.append(src)
            partners.append(frame + 1)
            taken = torch.zeros_like(taken).scatter_(1, src, True)
        sources.append(sim[:, t - 2].masked_fill(taken, float("-inf")).topk(r, dim=1)[1])  # last frame, backwards
        partners.append(t - 2)
        flat = {k: v.flatten(1, 2) for k, v in vids.items()}  # (B, T x S, .), index frame x S + position
        src_idx = torch.cat([f * s + i for f, i in enumerate(sources)], dim=1)  # (B, T x r)
        dst_idx = torch.cat([partners[f] * s + i for f, i in enumerate(sources)], dim=1)
        weight = flat["w"].gather(1, src_idx[..., None]) if self.weighted else None
        out = {}
        for key, v in flat.items():
            c = v.shape[-1]
            src = v.gather(1, src_idx[..., None].expand(-1, -1, c))
            at = dst_idx[..., None].expand(-1, -1, c)
            if key == "src":  # rows index their own frame's patches: a neighbour's are not the destination's
                out[key] = v
            elif key in ("xs", "s"):
                out[key] = v.scatter_add(1, at, src * weight if weight is not None else src)
            else:
                out[key] = v.scatter_add(1, at, src)
        gone = torch.zeros(b, t * s, dtype=torch.bool, device=sim.device).scatter_(1, src_idx, True)
        keep = torch.sort(gone.to(torch.int8), dim=1, stable=True)[1][:, : t * (s - r)]
        keep = keep.sort(dim=1)[0]  # positional order: frame after frame, S - r tokens each
        return {k: v.gather(1, keep[..., None].expand(-1, -1, v.shape[-1])).reshape(b * t, s - r, v.shape[-1])
                for k, v in out.items()}


__all__ = ["STIMTemporal", "merge_round", "stim_saliency"]
