"""Top-K, EViT and STA pruning (``merging.pruning``): the attention rows under fused == explicit attention,
hand-worked examples, the authors' algorithms re-implemented literally on the same inputs, r = 0, and token counts
per block on the small presets."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import (
    AttentionInfo, MergeSetting, MergeState, TokenGrid, apply_merge, build_method, find_mergeable, keep_tokens,
    token_counts, unpatch,
)
from vidtldr_pl.merging.pruning import STA, EViT, TopK, cls_attention, mean_query_attention

sys.path.insert(0, str(Path(__file__).parent))
from backbone_contract import small_overrides  # noqa: E402

PRESETS = ["umt_tiny", "videomae_tiny", "vificlip_tiny"]
METHODS = ["topk", "evit", "sta"]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qk(b: int = 2, h: int = 3, n: int = 11, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _g(seed)
    return torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)


def _both(q: torch.Tensor, k: torch.Tensor) -> tuple[AttentionInfo, AttentionInfo]:
    """(explicit info with probs and keys, fused info with scaled q and keys) of the same attention."""
    return AttentionInfo(probs=(q @ k.transpose(-1, -2)).softmax(dim=-1), k=k), AttentionInfo(q=q, k=k)


# ------------------------------------------------------------------------------------------ attention rows
@pytest.mark.parametrize("chunk", [1, 4, 512])
def test_rows_fused_equal_explicit(chunk):
    """CLS row and mean-query row from q / k (chunked queries) == from the probs; tolerance 1e-6 (fp32)."""
    explicit, fused = _both(*_qk())
    torch.testing.assert_close(cls_attention(fused), cls_attention(explicit), atol=1e-6, rtol=0)
    torch.testing.assert_close(mean_query_attention(fused, chunk), mean_query_attention(explicit), atol=1e-6, rtol=0)
    assert torch.allclose(mean_query_attention(explicit).sum(dim=-1), torch.ones(2))  # a distribution over keys


def test_topk_hand_worked():
    """Two heads, 5 tokens (CLS first). Head-mean CLS row: [.1, .1, .4, .15, .25] -> r = 2 drops tokens 1 and 3.
    Mean-query row (no CLS): columns averaged over heads and queries."""
    h0 = torch.tensor([0.1, 0.2, 0.3, 0.1, 0.3])
    h1 = torch.tensor([0.1, 0.0, 0.5, 0.2, 0.2])
    probs = torch.full((1, 2, 5, 5), 0.2)
    probs[0, 0, 0], probs[0, 1, 0] = h0, h1
    method = TopK(protected=1)
    assert method.plan(torch.zeros(1, 5, 4), AttentionInfo(probs=probs), 2).keep_idx[0, :, 0].tolist() == [0, 2, 4]
    # mean-query row: rows 1..4 are uniform 0.2; column j gets (0.2 * 4 + cls_j) / 5 per head, averaged
    expect = (0.8 + (h0 + h1) / 2) / 5
    torch.testing.assert_close(mean_query_attention(AttentionInfo(probs=probs))[0], expect)
    plan = TopK(score="mean_query").plan(torch.zeros(1, 5, 4), AttentionInfo(probs=probs), 2)
    assert plan.keep_idx[0, :, 0].tolist() == [2, 3, 4]  # column means .2, .1+.., the 2 lowest: tokens 0 and 1


def test_score_auto_and_errors():
    explicit, _ = _both(*_qk())
    assert torch.equal(TopK(protected=1).token_scores(explicit), cls_attention(explicit))
    assert torch.equal(TopK(protected=0).token_scores(explicit), mean_query_attention(explicit))
    with pytest.raises(ValueError, match="score 'cls' needs a CLS token"):
        TopK(score="cls").token_scores(explicit)
    for make, needle in [(lambda: TopK(score="row"), "unknown topk score 'row'"),
                         (lambda: EViT(fuse="max"), "unknown evit fuse 'max'"),
                         (lambda: TopK(chunk_size=0), "chunk_size"),
                         (lambda: STA(position="before"), "unknown merge position 'before'"),
                         (lambda: build_method("evit", keep_rate=0.5), "keep_rate")]:
        with pytest.raises((ValueError, TypeError), match=needle):
            make()


# ------------------------------------------------------------------------------------------------- EViT
def _complement_idx(idx: torch.Tensor, dim: int) -> torch.Tensor:
    """youweiliang/evit helpers.py complement_idx, literally."""
    a = torch.arange(dim, device=idx.device)
    ndim = idx.ndim
    dims = idx.shape
    n_idx = dims[-1]
    dims = dims[:-1] + (-1, )
    for i in range(1, ndim):
        a = a.unsqueeze(0)
    a = a.expand(*dims)
    masked = torch.scatter(a, -1, idx, 0)
    compl, _ = torch.sort(masked, dim=-1, descending=False)
    compl = compl.permute(-1, *tuple(range(ndim - 1)))
    compl = compl[n_idx:].permute(*(tuple(range(1, ndim)) + (0,)))
    return compl


def _evit_official(x: torch.Tensor, attn: torch.Tensor, left_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """youweiliang/evit evit.py Attention.forward (the top-k part) + Block.forward (fuse_token=True), literally:
    x (B, N, C) after the attention residual, attn (B, H, N, N) -> (tokens, idx of the kept non-CLS tokens)."""
    B, N, C = x.shape
    cls_attn = attn[:, :, 0, 1:]  # [B, H, N-1]
    cls_attn = cls_attn.mean(dim=1)  # [B, N-1]
    _, idx = torch.topk(cls_attn, left_tokens, dim=1, largest=True, sorted=True)  # [B, left_tokens]
    index = idx.unsqueeze(-1).expand(-1, -1, C)  # [B, left_tokens, C]
    non_cls = x[:, 1:]
    x_others = torch.gather(non_cls, dim=1, index=index)  # [B, left_tokens, C]
    compl = _complement_idx(idx, N - 1)  # [B, N-1-left_tokens]
    non_topk = torch.gather(non_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))
    non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)  # [B, N-1-left_tokens]
    extra_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)  # [B, 1, C]
    return torch.cat([x[:, 0:1], x_others, extra_token], dim=1), idx


@pytest.mark.parametrize("r", [1, 4, 6])
def test_evit_equals_official_code(r):
    """fuse="sum" is the official block: the same kept tokens (ours in positional order: the official top-k order
    sorted by position) and the same fused token; exact for kept tokens, 1e-6 for the fused one."""
    q, k = _qk(n=14, seed=1)
    explicit, fused = _both(q, k)
    x = torch.randn(2, 14, 6, generator=_g(2))
    ref, idx = _evit_official(x, explicit.probs, 14 - 1 - r - 1)
    order = idx.sort(dim=1)[1]
    ref_kept = ref[:, 1:-1].gather(1, order[..., None].expand(-1, -1, 6))
    for info in (explicit, fused):
        state = MergeState(trace_source=True)
        out = EViT(fuse="sum", protected=1)(x, state, info, r)
        assert out.shape == (2, 14 - r, 6)
        assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 1:-1], ref_kept)
        torch.testing.assert_close(out[:, -1], ref[:, -1], atol=1e-6, rtol=0)
        assert torch.equal(state.size[:, :-1], torch.ones(2, 13 - r, 1)) and state.size[:, -1].eq(r + 1).all()
        assert state.source.sum(dim=1).eq(1).all()  # every input token held by exactly one token


def test_evit_average_hand_worked():
    """The default fuse: x_f = sum a_i s_i x_i / sum a_i s_i, size sum s_i. CLS row [0, .5, .3, .1, .1], token i
    = (i, i), sizes [1, 1, 2, 1, 3], r = 2: N - r - 1 = 2 kept (the CLS and token 1), tokens 2, 3, 4 fused:
    (.3*2*2 + .1*1*3 + .1*3*4) / (.3*2 + .1*1 + .1*3) = 2.7, of size 6."""
    probs = torch.full((1, 1, 5, 5), 0.2)
    probs[0, 0, 0] = torch.tensor([0.0, 0.5, 0.3, 0.1, 0.1])
    x = torch.arange(5.0)[None, :, None].repeat(1, 1, 2)  # token i = (i, i)
    state = MergeState(size=torch.tensor([1.0, 1.0, 2.0, 1.0, 3.0])[None, :, None])
    out = EViT(protected=1)(x, state, AttentionInfo(probs=probs), 2)  # r = 2: keep N - r - 1 = 2 (CLS, token 1)
    fused = (0.3 * 2 * 2 + 0.1 * 1 * 3 + 0.1 * 3 * 4) / (0.3 * 2 + 0.1 * 1 + 0.1 * 3)  # tokens 2, 3, 4
    assert out[0, :2, 0].tolist() == [0.0, 1.0]
    torch.testing.assert_close(out[0, 2], torch.tensor([fused, fused]))
    assert state.size[0, :, 0].tolist() == [1.0, 1.0, 6.0]


# -------------------------------------------------------------------------------------------------- STA
def _sta_official(x: torch.Tensor, metric: torch.Tensor, r: int, T: int) -> torch.Tensor:
    """Mark12Ding/STA model_vit.py VisionTransformer.merge, the index == 0 stage (forward frame order), literally
    (einops' rearrange written as unflatten: einops is no dependency)."""
    perm = torch.arange(T)
    x = x.unflatten(1, (T, -1))  # einops.rearrange(x, 'B (T N) C -> B T N C', T=T)
    metric = metric.unflatten(1, (T, -1))  # einops.rearrange(metric, 'B (T N) C -> B T N C', T=T)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    D_x = x.shape[-1]
    D_m = metric.shape[-1]
    N = x.shape[2]
    caam = x.abs().sum(-1)
    cam_min = caam.min(dim=-1, keepdim=True)[0]
    cam_max = caam.max(dim=-1, keepdim=True)[0]
    caam = (caam - cam_min) / (cam_max - cam_min)

    def tome_drop(x, m):
        a, b = m[..., ::2, :], m[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=False)[..., None]
        x_cat = torch.cat([x, m], dim=-1)
        src, dst = x_cat[..., ::2, :], x_cat[..., 1::2, :]
        n, t1, c = src.shape
        src = src.gather(dim=-2, index=edge_idx.expand(n, t1, c))
        ult = torch.cat([dst, src], dim=1)
        return ult[..., :-m.shape[-1]], ult[..., -m.shape[-1]:]

    x_0, m_0 = tome_drop(x[:, perm[0]], metric[:, perm[0]])
    x_final = x_0[:, None, :-r]
    for t in range(1, T):
        if t == 1:
            m_t = (metric[:, perm[t]] @ m_0.transpose(-1, -2)).softmax(dim=1)
            s_agg = m_t.sum(dim=-1, keepdim=True)
        else:
            m_t = metric[:, perm[t - 1]].gather(1, i_t.repeat(1, 1, D_m))
            m_t = (metric[:, perm[t]] @ m_t.transpose(-1, -2)).softmax(dim=1)
            s_agg = m_t @ s_agg
        s = s_agg[..., 0] * (1 - caam[:, perm[t]])
        i_t = s.topk(k=N - r, dim=1, largest=False)[1][..., None]
        x_t = x[:, perm[t]].gather(1, i_t.repeat(1, 1, D_x))
        s_agg = s_agg.gather(1, i_t)
        s_agg = s_agg / s_agg.sum(dim=1, keepdim=True)
        x_final = torch.cat([x_final, x_t[:, None]], dim=1)
    return x_final  # (B, T, N - r, C), each frame's tokens in the official (score) order


def _by_first_channel(t: torch.Tensor) -> torch.Tensor:
    """(..., n, C) -> rows sorted by their first channel (order-free comparison of token sets)."""
    return t.gather(-2, t[..., :1].argsort(dim=-2).expand_as(t))


@pytest.mark.parametrize(("frames", "per_frame", "r"), [(2, 8, 3), (4, 9, 2), (8, 16, 5)])
def test_sta_equals_official_code(frames, per_frame, r):
    """Joint rows, r per frame: the same kept tokens per frame as the official stage (ours in positional order,
    compared as sets: exact). Frame-wise rows (the frames as batch rows) keep the same tokens."""
    g = _g(frames)
    x = torch.randn(2, frames * per_frame, 5, generator=g)
    keys = torch.randn(2, 3, frames * per_frame, 4, generator=g)  # 3 heads: STA uses their mean
    ref = _sta_official(x, keys.mean(dim=1), r, frames)
    method = STA()
    state = MergeState(grid=TokenGrid(frames, per_frame))
    plan = method.plan(x, AttentionInfo(k=keys), r * frames, state)
    ours = keep_tokens(plan, x).unflatten(1, (frames, per_frame - r))
    assert torch.equal(_by_first_channel(ours), _by_first_channel(ref))
    rows = x.unflatten(1, (frames, per_frame)).flatten(0, 1)  # (B x T, S, C)
    row_keys = keys.unflatten(2, (frames, per_frame)).transpose(1, 2).flatten(0, 1)  # (B x T, H, S, d)
    state = MergeState(grid=TokenGrid(frames, per_frame, framewise=True))
    out = method(rows, state, AttentionInfo(k=row_keys), r)
    assert torch.equal(out, ours.flatten(0, 1)) and state.grid == TokenGrid(frames, per_frame - r, framewise=True)


def test_sta_uneven_budget_and_one_frame():
    """Joint rows remove exactly r: frame t drops r // T, plus one for the first r % T frames; the grid is kept
    only when T divides r. Without a grid the row is one frame: the first-frame step (the r even tokens most
    similar to their best odd match go)."""
    x = torch.randn(1, 1 + 3 * 4, 6, generator=_g(5))
    keys = torch.randn(1, 2, 13, 4, generator=_g(6))
    method = STA(protected=1)
    state = MergeState(grid=TokenGrid(3, 4, prefix=1))
    out = method(x, state, AttentionInfo(k=keys), 4)
    assert out.shape[1] == 9 and state.grid is None and torch.equal(out[:, 0], x[:, 0])
    frame_of = (method.plan(x, AttentionInfo(k=keys), 4, MergeState(grid=TokenGrid(3, 4, prefix=1))).keep_idx[0, 1:, 0]
                - 1) // 4
    assert torch.bincount(frame_of, minlength=3).tolist() == [2, 3, 3]  # drops 2, 1, 1
    state = MergeState(grid=TokenGrid(3, 4, prefix=1))
    method(x, state, AttentionInfo(k=keys), 3)
    assert state.grid == TokenGrid(3, 3, prefix=1)
    # one frame: score = best cosine of each even token to the odd tokens
    m = keys.mean(dim=1)[0, 1:]
    m = m / m.norm(dim=-1, keepdim=True)
    best = (m[::2] @ m[1::2].T).max(dim=-1)[0]
    gone = set((2 * best.argsort(descending=True)[:2] + 1).tolist())
    plan = method.plan(x, AttentionInfo(k=keys), 2, MergeState())
    assert set(range(13)) - set(plan.keep_idx[0, :, 0].tolist()) == gone


# ------------------------------------------------------------------------------------- on the small presets
_models: dict[str, torch.nn.Module] = {}


def preset(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """(the small preset, random weights; a video of 2 clips): UMT / VideoMAE 64 px, 4 temporal positions of
    16 tokens (64 per video, no CLS); ViFi-CLIP 32 px, 4 frames, rows of 1 + 16 tokens."""
    if name not in _models:
        torch.manual_seed(0)
        over = small_overrides(name)
        if "vificlip" not in name:
            over = {**over, "img_size": 64, "num_frames": 2 * over["num_frames"]}
        _models[name] = create_model(name, **over).eval()
    model = _models[name]
    enc = find_mergeable(model)[0]
    shape = list(enc.example_input(2).shape)
    if "vificlip" in name:
        shape[2] = 4
    return model, torch.randn(shape, generator=_g(1))


#: r per block and (tokens per block, grid after the last block) for STA; Top-K and EViT lose the grid
SCHEDULES = {"umt_tiny": [8, 4, 4], "videomae_tiny": [8, 4, 4], "vificlip_tiny": [4, 2, 2]}
STA_COUNTS = {"umt_tiny": ([56, 52, 48], TokenGrid(4, 12)), "videomae_tiny": ([56, 52, 48], TokenGrid(4, 12)),
              "vificlip_tiny": ([13, 11, 9], TokenGrid(4, 8, 1, True))}


@pytest.mark.parametrize("method", METHODS + ["stim_temporal"])
@pytest.mark.parametrize("name", PRESETS)
def test_r0_leaves_the_output_unchanged(name, method):
    """r = 0: the patched encoder's output equals the unpatched one bit for bit, in either attention mode."""
    model, video = preset(name)
    enc = find_mergeable(model)[0]
    with torch.no_grad():
        for attention in ("fused", "explicit"):
            unpatch(model)
            apply_merge(model, MergeSetting(method="none", attention=attention))
            ref = enc(video, enc.new_merge_state())
            apply_merge(model, MergeSetting(method=method, r=0, attention=attention))
            state = enc.new_merge_state()
            out = enc(video, state)
            assert torch.equal(out, ref) and state.size is None
    unpatch(model)
    apply_merge(model, MergeSetting(method="none", attention="fused"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", PRESETS)
def test_token_counts_on_presets(name, method):
    """Every block removes the schedule's r (``token_counts``), fused and explicit give the same tokens (1e-5 of
    the largest output), the prefix stays itself; STA keeps the grid when every frame loses the same count."""
    model, video = preset(name)
    enc = find_mergeable(model)[0]
    r = SCHEDULES[name]
    outs = {}
    for attention in ("explicit", "fused"):
        counts = apply_merge(model, MergeSetting(method=method, r=r, attention=attention, trace_source=True))[0]
        state = enc.new_merge_state()
        with torch.no_grad():
            outs[attention] = enc(video, state)
        n = enc.num_tokens
        assert state.tokens_per_layer == token_counts(r, n, enc.num_prefix_tokens) == counts
        held = state.source.sum(dim=1)  # per input token: how many tokens hold it (dropped: none)
        assert held.eq(1).all() if method == "evit" else held.le(1).all() and held.sum() < held.numel()
        for p in range(enc.num_prefix_tokens):
            assert state.source[:, p, p].eq(1).all() and state.source[:, p].sum(dim=-1).eq(1).all()
        if method == "sta":
            assert (state.tokens_per_layer, state.grid) == STA_COUNTS[name]
        else:
            assert state.grid is None
    unpatch(model)
    err = (outs["explicit"] - outs["fused"]).abs().max().item()
    assert err < 1e-5 * max(1.0, outs["explicit"].abs().max().item()), err
