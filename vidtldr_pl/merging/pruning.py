"""Pruning methods: Top-K and EViT by an attention row, and STA (semantic-aware temporal accumulation).

Top-K keeps the tokens the CLS (or the mean query) attends to most; EViT (Liang et al., ICLR 2022) does the same
and fuses the inattentive tokens into one token appended last; STA (Ding et al., ICCV 2023) drops, frame by frame,
the tokens earlier frames already showed that carry little activation.

The score of token j is one attention row, averaged over heads, WITHOUT the proportional-attention bias (as
``AttentionInfo.probs``): the CLS row a_j = mean_h softmax(q_cls k^T)_j, or for encoders without a CLS (UMT,
VideoMAE) the mean-query row a_j = mean_h mean_i softmax(q_i k^T)_j. Explicit attention reads it from the probs;
fused attention computes it from q / k: the CLS row in O(N) per head, the mean-query row in query chunks (never
N x N at once). Both ways give the same row up to float rounding.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .matching import DropPlan, drop_lowest
from .methods import MergeMethod, check_position, head_mean_keys, register_method
from .schedule import RValue, effective_r
from .state import AttentionInfo, MergeState, TokenGrid

SCORES = ("auto", "cls", "mean_query")


def cls_attention(attn: AttentionInfo, index: int = 0) -> Tensor:
    """(B, N) float32 head-mean attention row of query ``index`` (the CLS), from probs or from q / k."""
    with torch.no_grad():
        if attn.probs is not None:
            return attn.probs[:, :, index, :].float().mean(dim=1)
        if attn.q is None or attn.k is None:
            raise ValueError("attention-row scores need the attention: AttentionInfo has neither probs nor q and k")
        logits = attn.q[:, :, index : index + 1, :].float() @ attn.k.float().transpose(-1, -2)  # (B, H, 1, N)
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def mean_query_attention(attn: AttentionInfo, chunk_size: int = 512) -> Tensor:
    """(B, N) float32 mean over heads and queries of the attention rows, from probs or from q / k in query chunks
    of chunk_size (O(H x chunk x N) memory)."""
    with torch.no_grad():
        if attn.probs is not None:
            return attn.probs.float().mean(dim=(1, 2))
        if attn.q is None or attn.k is None:
            raise ValueError("attention-row scores need the attention: AttentionInfo has neither probs nor q and k")
        q, kt = attn.q, attn.k.float().transpose(-1, -2)
        total = q.new_zeros(q.shape[0], kt.shape[-1], dtype=torch.float32)
        for start in range(0, q.shape[-2], chunk_size):
            total += (q[..., start : start + chunk_size, :].float() @ kt).softmax(dim=-1).sum(dim=(1, 2))
        return total / (q.shape[1] * q.shape[2])


@register_method
class TopK(MergeMethod):
    """Top-K pruning: keep the tokens with the largest attention score, drop the other r (no merging).

    score: "cls" (the CLS row, query 0), "mean_query" (the mean of all rows) or "auto" (the CLS row when the
    encoder has a protected prefix, else the mean-query row). chunk_size: queries per chunk of the mean-query row
    under fused attention. Kept tokens stay in positional order; prefix tokens are never dropped.
    """

    name = "topk"
    needs_attention = True

    def __init__(self, score: str = "auto", chunk_size: int = 512, proportional_attention: bool = True,
                 protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if score not in SCORES:
            raise ValueError(f"unknown {self.name} score {score!r}; choose one of {SCORES}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"{self.name} chunk_size must be a positive number of queries, got {chunk_size!r}")
        self.score = score
        self.chunk_size = chunk_size

    def token_scores(self, attn: AttentionInfo | None) -> Tensor:
        """(B, N) float32 attention score of every token (see the class docstring)."""
        if attn is None:
            raise ValueError(f"{self.name} needs the block's attention (AttentionInfo)")
        score = self.score if self.score != "auto" else ("cls" if self.protected > 0 else "mean_query")
        if score == "cls":
            if self.protected < 1:
                raise ValueError(f"{self.name} score 'cls' needs a CLS token (a protected prefix); this encoder has "
                                 "none: use score 'mean_query' or 'auto'")
            return cls_attention(attn, 0)
        return mean_query_attention(attn, self.chunk_size)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> DropPlan:
        return drop_lowest(self.token_scores(attn), r, self.protected)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score={self.score!r}, protected={self.protected})"



@register_method
class EViT(TopK):
    """EViT (Liang et al., ICLR 2022): keep the N - r - 1 most attended tokens (prefix included), fuse the other
    r + 1 into one token appended last, so the block removes exactly r tokens.

    fuse: "average" (default): x_f = sum_i w_i x_i / sum_i w_i with w_i = a_i s_i (a_i the attention score, s_i
    the token's size: the attention its s_i patches would get), fp32. "sum": the official code's
    x_f = sum_i a_i x_i (youweiliang/evit ``evit.py`` Block.forward; not normalised, so the fused token shrinks by
    the attention the fused tokens held), sizes ignored in the value. Either way the fused token's size is
    sum_i s_i, the patches it holds, so proportional attention (log size) and size-weighted pooling count it as
    those patches; its source is the union of theirs. The official code orders the kept tokens by score; they
    stay in positional order here (a permutation: the CLS output and any pooling are unchanged).
    """

    name = "evit"
    FUSES = ("average", "sum")

    def __init__(self, score: str = "auto", fuse: str = "average", chunk_size: int = 512,
                 proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(score, chunk_size, proportional_attention, protected)
        if fuse not in self.FUSES:
            raise ValueError(f"unknown evit fuse {fuse!r}; choose one of {self.FUSES}")
        self.fuse = fuse

    def split(self, score: Tensor, r: int) -> tuple[Tensor, Tensor]:
        """score (B, N) -> (kept positions (B, N - r - 1) ascending, prefix first; fused positions (B, r + 1))."""
        p = self.protected
        order = torch.sort(score[:, p:], dim=-1, stable=True, descending=True)[1] + p
        keep_n = score.shape[1] - p - r - 1
        prefix = torch.arange(p, device=score.device).expand(score.shape[0], -1)
        keep = torch.cat([prefix, order[:, :keep_n].sort(dim=-1)[0]], dim=1)
        return keep, order[:, keep_n:]

    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        """x: (B, N, C) -> (B, N - r', C): kept tokens, then the fused token; updates size / source / shift / grid."""
        if self.per_row(state, r):
            return super().__call__(x, state, attn, r)  # rows of different counts: the base runs this step per group
        b, n, c = x.shape
        r_eff = effective_r(r, n, self.protected)
        if r_eff == 0:
            return x
        state.init_source(x)
        score = self.token_scores(attn)
        keep, fused = self.split(score, r_eff)
        size = state.size if state.size is not None else x.new_ones(b, n, 1, dtype=torch.float32)
        a = score.gather(1, fused)[..., None]  # (B, r + 1, 1)
        s = size.gather(1, fused[..., None])
        xf = x.gather(1, fused[..., None].expand(-1, -1, c)).float()
        if self.fuse == "sum":
            token = (xf * a).sum(dim=1, keepdim=True)
        else:
            w = a * s
            token = (xf * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1e-30)
        x = torch.cat([x.gather(1, keep[..., None].expand(-1, -1, c)), token.to(x.dtype)], dim=1)
        state.size = torch.cat([size.gather(1, keep[..., None]), s.sum(dim=1, keepdim=True)], dim=1)
        state.shift = None  # the fused token has no shift of its own
        if state.source is not None:
            src = state.source
            held = src.gather(1, fused[..., None].expand(-1, -1, src.shape[-1])).amax(dim=1, keepdim=True)
            state.source = torch.cat([src.gather(1, keep[..., None].expand(-1, -1, src.shape[-1])), held], dim=1)
        state.grid = self.grid_after(state.grid, r_eff)
        return x

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> DropPlan:
        """The kept tokens only (the fused token is built in ``__call__``)."""
        keep, _ = self.split(self.token_scores(attn), r)
        return DropPlan(keep_idx=keep[..., None])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score={self.score!r}, fuse={self.fuse!r}, protected={self.protected})"




def sta_keep(x: Tensor, metric: Tensor, drops: list[int]) -> list[Tensor]:
    """STA's selection (Ding et al., ICCV 2023, Mark12Ding/STA ``model_vit.py`` ``merge``) on T frames of S tokens.

    x: (B, T, S, C) tokens, metric: (B, T, S, Cm) head-mean keys, drops[t]: tokens dropped from frame t (frames in
    processing order) -> per frame the kept indices (B, S - drops[t]), ascending. Frame 0: keep every odd token and
    the even tokens least similar to their best odd match (the r most redundant even tokens go). Frame t >= 1:
    each token accumulates the similarity mass the previous frame's tokens send it (softmax over frame t's tokens
    of cosine similarities; frame 0 sends from all its tokens, later frames from their kept tokens, weighted by
    their own normalised mass), times 1 - its min-max L1 activation; the drops[t] highest scores go.
    """
    with torch.no_grad():
        s_len = x.shape[2]
        m = metric.float()
        m = m / m.norm(dim=-1, keepdim=True)
        caam = x.float().abs().sum(dim=-1)  # (B, T, S)
        lo, hi = caam.amin(dim=-1, keepdim=True), caam.amax(dim=-1, keepdim=True)
        caam = (caam - lo) / (hi - lo).clamp_min(1e-12)
        node_max = (m[:, 0, ::2] @ m[:, 0, 1::2].transpose(-1, -2)).max(dim=-1)[0]
        edge = node_max.argsort(dim=-1, descending=False)
        odd = torch.arange(1, s_len, 2, device=x.device).expand(x.shape[0], -1)
        kept = [torch.cat([odd, 2 * edge], dim=1)[:, : s_len - drops[0]]]
        s_agg = idx = None
        for t in range(1, x.shape[1]):
            if t == 1:
                s_agg = (m[:, 1] @ m[:, 0].transpose(-1, -2)).softmax(dim=1).sum(dim=-1, keepdim=True)
            else:
                prev = m[:, t - 1].gather(1, idx[..., None].expand(-1, -1, m.shape[-1]))
                s_agg = (m[:, t] @ prev.transpose(-1, -2)).softmax(dim=1) @ s_agg
            score = s_agg[..., 0] * (1 - caam[:, t])
            idx = score.topk(k=s_len - drops[t], dim=1, largest=False)[1]
            s_agg = s_agg.gather(1, idx[..., None])
            s_agg = s_agg / s_agg.sum(dim=1, keepdim=True)
            kept.append(idx)
        return [k.sort(dim=-1)[0] for k in kept]


@register_method
class STA(MergeMethod):
    """STA (Ding et al., ICCV 2023): prune the tokens that repeat what earlier frames showed (temporal
    accumulation of key similarity) and carry little activation (L1 magnitude), frame by frame (``sta_keep``).

    How r is spread over frames (the grid the encoder records in MergeState.grid):
    - frame-wise rows (ViFi-CLIP, rows are frames): each frame row loses r, STA's own per-frame budget; the grid
      stays (per_frame - r).
    - joint rows (UMT, VideoMAE: T frames of S tokens in one row): the row loses exactly r, frame t losing
      r // T, plus one for the first r % T frames, so the schedule's counts hold; the grid stays (per_frame - r / T)
      when T divides r and is lost otherwise (a later STA block then treats the row as one frame).
    - no grid (image models, or after a method that lost it): the row is one frame: STA's first-frame step.
    The official code fixes T per stage for 16-frame ViTs (8, then 4 and 2 frame groups, the middle stage in
    reverse order); here the frames are the encoder's, in forward order. position: "mlp" (official: after the
    block, with that block's keys) or "attn". Kept tokens stay in positional order; the prefix is never dropped.
    """

    name = "sta"
    needs_attention = True

    def __init__(self, position: str = "mlp", proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        self.position = check_position(position)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> DropPlan:
        metric = head_mean_keys(attn, "sta")
        p, (rows, n, c) = self.protected, x.shape
        grid = _usable_grid(state.grid if state is not None else None, n, rows, p)
        if grid is None:  # one frame
            frames, drops, shape = 1, [r], (rows, 1, n - p)
        elif grid.framewise:
            frames, drops, shape = grid.frames, [r] * grid.frames, (rows // grid.frames, grid.frames, n - p)
        else:
            frames, shape = grid.frames, (rows, grid.frames, grid.per_frame)
            drops = [r // frames + (1 if t < r % frames else 0) for t in range(frames)]
        kept = sta_keep(x[:, p:].reshape(*shape, c), metric[:, p:].reshape(*shape, -1), drops)
        s = shape[2]
        if grid is not None and grid.framewise:  # (B, T, S - r) -> rows (B x T, S - r)
            body = torch.stack(kept, dim=1).reshape(rows, -1)
        else:
            body = torch.cat([k + t * s for t, k in enumerate(kept)], dim=1)
        prefix = torch.arange(p, device=x.device).expand(rows, -1)
        return DropPlan(keep_idx=torch.cat([prefix, body + p], dim=1)[..., None])

    def grid_after(self, grid: TokenGrid | None, r: int) -> TokenGrid | None:
        if grid is None or grid.prefix != self.protected:
            return None
        if grid.framewise:
            return TokenGrid(grid.frames, grid.per_frame - r, grid.prefix, True)
        if r % grid.frames:
            return None
        return TokenGrid(grid.frames, grid.per_frame - r // grid.frames, grid.prefix)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(position={self.position!r}, protected={self.protected})"


def _usable_grid(grid: TokenGrid | None, n: int, rows: int, protected: int) -> TokenGrid | None:
    """grid when it describes rows of n tokens after the protected prefix (ValueError when it contradicts them),
    else None (no grid, or more tokens protected than the grid's prefix: the row is then one frame)."""
    if grid is None or grid.prefix != protected:
        return None
    if grid.tokens() != n or (grid.framewise and rows % grid.frames):
        raise ValueError(f"MergeState.grid {grid} does not describe the {rows} rows of {n} tokens at this block")
    return grid


__all__ = ["EViT", "SCORES", "STA", "TopK", "cls_attention", "mean_query_attention", "sta_keep"]
