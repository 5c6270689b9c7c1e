"""STIM-TM's temporal step (``merging.temporal``): the authors' ``merge_temporal.py`` re-implemented literally on the
same inputs, the joint and frame-wise layouts (hand-worked), the no-grid fallback, fused == explicit, token counts
and the grid on the small presets."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidtldr_pl.merging import (
    AttentionInfo, MergeSetting, MergeState, TokenGrid, ToMe, apply_merge, find_mergeable, negative_entropy_from_probs,
    token_counts, unpatch,
)
from vidtldr_pl.merging.temporal import STIMTemporal, merge_round, stim_saliency

sys.path.insert(0, str(Path(__file__).parent))
from test_pruning_methods import PRESETS, preset  # noqa: E402


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------- the authors' code, literally
def _official_tim(metric, score_obj, r):
    """xjiangmed/STIM-TM ToMe/merge_temporal.py bipartite_soft_matching_TIM_TM (class_token False, 'frame'),
    literally: metric (B, N, T, C), score_obj (B, N, T, 1) -> merge(x, mode)."""
    t = metric.shape[-2]
    r = min(r, (t - 0) // 1)
    with torch.no_grad():
        B, N, T, _ = metric.shape
        current_metric = metric.clone()
        current_score_obj = score_obj.clone()
        all_src_indices, all_dst_indices, all_max_sim_indices, all_src_sos = [], [], [], []
        for i in range(r):
            _, _, T1, _ = current_metric.shape
            similarity_matrix = F.cosine_similarity(current_metric[:, :, :-1, :], current_metric[:, :, 1:, :], dim=-1)
            _, max_similarity_indices = torch.max(similarity_matrix, dim=2, keepdim=True)
            src_indices = max_similarity_indices + 1
            dst_indices = torch.arange(T1 - 1).to(metric.device)[None, None, :].repeat(B, N, 1)
            dst_indices[dst_indices > max_similarity_indices] += 1
            C_s = current_score_obj.shape[-1]
            src_so = current_score_obj.gather(dim=2, index=src_indices.unsqueeze(-1).expand(-1, -1, -1, C_s))
            dst_so = current_score_obj.gather(dim=2, index=dst_indices.unsqueeze(-1).expand(-1, -1, -1, C_s))
            dst_so.scatter_add_(dim=2, index=max_similarity_indices.unsqueeze(-1).expand(-1, -1, -1, C_s), src=src_so)
            current_score_obj = dst_so
            all_src_indices.append(src_indices)
            all_dst_indices.append(dst_indices)
            all_max_sim_indices.append(max_similarity_indices)
            all_src_sos.append(src_so)
            C_m = current_metric.shape[-1]
            src_metric = current_metric.gather(dim=2, index=src_indices.unsqueeze(-1).expand(-1, -1, -1, C_m))
            dst_metric = current_metric.gather(dim=2, index=dst_indices.unsqueeze(-1).expand(-1, -1, -1, C_m))
            dst_metric.scatter_add_(dim=2, index=max_similarity_indices.unsqueeze(-1).expand(-1, -1, -1, C_m),
                                    src=src_metric)
            current_metric = dst_metric

    def merge(x, mode="mean"):
        current_x = x.clone()
        C = x.shape[-1]
        for i in range(r):
            src = current_x.gather(dim=2, index=all_src_indices[i].unsqueeze(-1).expand(-1, -1, -1, C))
            dst = current_x.gather(dim=2, index=all_dst_indices[i].unsqueeze(-1).expand(-1, -1, -1, C))
            src = (src * all_src_sos[i]).to(dst.dtype)
            dst = dst.scatter_reduce(dim=2, index=all_max_sim_indices[i].unsqueeze(-1).expand(-1, -1, -1, C), src=src,
                                     reduce=mode)
            current_x = dst
        return dst
    return merge


def _official_wavg(merge, x, size=None):
    """STIM-TM ToMe/merge.py merge_wavg, literally."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    x = x / size
    return x, size


def _official_score(score_attn):
    """STIM-TM ToMe/patch/timesformer.py ToMeBlock.get_objective_score, literally: (BL, H, T, T) -> (BL, T, 1)."""
    score_attn = score_attn.mean(dim=1)
    scores = (score_attn * torch.log(score_attn)).sum(dim=2).unsqueeze(-1)
    epsilon = 1e-6
    scores = scores - scores.amin(dim=1, keepdim=True)
    scores = scores / (scores.amax(dim=1, keepdim=True) + epsilon)
    return scores


@pytest.mark.parametrize(("frames", "rounds"), [(4, 1), (6, 3), (8, 5)])
def test_rounds_equal_official_code(frames, rounds):
    """``stim_saliency`` == get_objective_score, ``merge_round`` x r == TIM_TM + merge_wavg: values and sizes to
    1e-6 (fp32), on random keys, values, sizes and temporal attention."""
    g = _g(frames)
    b, s, c = 2, 5, 6
    metric = torch.randn(b, s, frames, 4, generator=g)
    x = torch.randn(b, s, frames, c, generator=g)
    size = torch.rand(b, s, frames, 1, generator=g) + 0.5
    attn = torch.softmax(3 * torch.randn(b * s, 2, frames, frames, generator=g), dim=-1)
    score = _official_score(attn).reshape(b, s, frames, 1)
    ours_score = stim_saliency(negative_entropy_from_probs(attn).reshape(b, s, frames))[..., None]
    torch.testing.assert_close(ours_score, score, atol=1e-6, rtol=0)
    ref_x, ref_size = _official_wavg(_official_tim(metric, score, rounds), x, size)
    cols = {"m": metric, "xs": x * size, "s": size, "w": score}
    for _ in range(rounds):
        cols, _, _ = merge_round(cols, weighted=True)
    torch.testing.assert_close(cols["xs"] / cols["s"], ref_x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cols["s"], ref_size, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------- joint rows
def _joint_case(seed=0, prefix=1, frames=4, per_frame=3, heads=2):
    g = _g(seed)
    n = prefix + frames * per_frame
    x = torch.randn(2, n, 5, generator=g)
    q, k = torch.randn(2, heads, n, 4, generator=g), torch.randn(2, heads, n, 4, generator=g)
    return x, AttentionInfo(probs=(q @ k.transpose(-1, -2)).softmax(-1), k=k), AttentionInfo(q=q, k=k)


def test_joint_rows_follow_the_rounds_and_keep_the_grid():
    """Joint rows (CLS + 4 frames x 3 positions), r = 6: two rounds at every position; the output is frame-major
    with 2 frames (slot t' of a position: its t'-th remaining token), equal to the rounds run by hand; explicit ==
    fused to 1e-6."""
    x, explicit, fused = _joint_case()
    outs = []
    for info in (explicit, fused):
        state = MergeState(grid=TokenGrid(4, 3, prefix=1), trace_source=True)
        outs.append(STIMTemporal(protected=1)(x, state, info, 6))
        assert state.grid == TokenGrid(2, 3, prefix=1) and state.size[:, 0].eq(1).all()
        assert state.source.sum(dim=1).eq(1).all() and state.source[:, 0, 0].eq(1).all()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    ent = negative_entropy_from_probs(explicit.probs, zero_safe=True)[:, 1:]
    cols = {"m": explicit.k.mean(dim=1)[:, 1:], "xs": x[:, 1:], "s": torch.ones(2, 12, 1), "w": ent}
    cols = {k: v.unflatten(1, (4, 3)).transpose(1, 2) for k, v in cols.items()}
    cols["w"] = stim_saliency(cols["w"][..., 0])[..., None]
    for _ in range(2):
        cols, _, _ = merge_round(cols, weighted=True)
    expect = (cols["xs"] / cols["s"]).transpose(1, 2).flatten(1, 2)
    torch.testing.assert_close(outs[0], torch.cat([x[:, :1], expect], dim=1), atol=1e-6, rtol=1e-6)


def test_joint_partial_round_hand_worked():
    """2 positions x 3 frames, r = 1 (less than a round): only the position whose best adjacent pair is most
    similar merges. Position 0: keys e0, e0, e1 (frames 0 and 1 identical: cos 1); position 1: e0, e1, e2 (cos 0).
    Unweighted: position 0's frame 1 merges into frame 0 (mean of the two values, size 2); the grid is lost."""
    e = torch.eye(3)
    keys = torch.stack([e[0], e[0], e[0], e[1], e[1], e[2]])  # frame-major: (f0 p0, f0 p1, f1 p0, f1 p1, ...)
    x = torch.arange(6.0)[None, :, None]
    state = MergeState(grid=TokenGrid(3, 2))
    out = STIMTemporal(weighted=False)(x, state, AttentionInfo(k=keys[None, None]), 1)
    # slots frame-major: (t'0 p0 = merged 0 and 2), (t'0 p1 = 1), (t'1 p0 = 4), (t'1 p1 = 3), (t'2 p1 = 5)
    assert out[0, :, 0].tolist() == [1.0, 1.0, 4.0, 3.0, 5.0]
    assert state.size[0, :, 0].tolist() == [2.0, 1.0, 1.0, 1.0, 1.0] and state.grid is None


# ------------------------------------------------------------------------------------- frame-wise rows
def test_framewise_rows_hand_worked():
    """Frame-wise rows (2 frames of CLS + 4 tokens), r = 1, unweighted. Adjacent-frame key cosines per position:
    [1, .8, 0, .6] -> frame 0 gives position 0 (value 1) to frame 1 (value 6); frame 1 gives its best remaining,
    position 1 (value 7), to frame 0 (value 2). Every row loses one token; each destination is the mean of the two
    (size 2)."""
    keys = torch.zeros(2, 5, 2)
    keys[:, :, 0] = 1.0
    keys[1, 1:] = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])  # frame 1 vs frame 0's (1, 0)
    x = torch.arange(10.0).reshape(2, 5, 1)  # row 0 = frame 0: 0..4, row 1 = frame 1: 5..9
    state = MergeState(grid=TokenGrid(2, 4, prefix=1, framewise=True))
    out = STIMTemporal(weighted=False, protected=1)(x, state, AttentionInfo(k=keys[:, None]), 1)
    assert out[:, :, 0].tolist() == [[0.0, 4.5, 3.0, 4.0], [5.0, 3.5, 8.0, 9.0]]  # (2+7)/2, (1+6)/2
    assert state.size[:, :, 0].tolist() == [[1, 2, 1, 1], [1, 2, 1, 1]]
    assert state.grid == TokenGrid(2, 3, prefix=1, framewise=True)


def test_framewise_rows_no_chains():
    """5 frames of 8 tokens, r = 3: every row loses 3; sizes add up to the 40 input patches per video (no token
    merged into a token that leaves), weighted (sizes are then weighted too, so unweighted for the sum check)."""
    g = _g(4)
    x, k = torch.randn(10, 8, 4, generator=g), torch.randn(10, 2, 8, 4, generator=g)
    state = MergeState(grid=TokenGrid(5, 8, framewise=True))
    out = STIMTemporal(weighted=False)(x, state, AttentionInfo(k=k), 3)
    assert out.shape == (10, 5, 4) and state.grid == TokenGrid(5, 5, framewise=True)
    assert state.size.reshape(2, -1).sum(dim=1).tolist() == [40.0, 40.0]
    state = MergeState(grid=TokenGrid(5, 8, framewise=True))
    q = torch.randn(10, 2, 8, 4, generator=g)
    probs = (q @ k.transpose(-1, -2)).softmax(-1)
    a = STIMTemporal()(x, state, AttentionInfo(probs=probs, k=k), 3)
    b = STIMTemporal()(x, MergeState(grid=TokenGrid(5, 8, framewise=True)), AttentionInfo(q=q, k=k), 3)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_no_grid_falls_back_to_tome_on_keys():
    """Without a grid (image models) the step is ToMe's bipartite merge on the keys, bit for bit."""
    x, explicit, _ = _joint_case(seed=3)
    s1, s2 = MergeState(trace_source=True), MergeState(trace_source=True)
    ours = STIMTemporal(protected=1)(x, s1, explicit, 4)
    ref = ToMe(protected=1)(x, s2, explicit, 4)
    assert torch.equal(ours, ref) and torch.equal(s1.size, s2.size) and torch.equal(s1.source, s2.source)


def test_bad_options():
    for make, needle in [(lambda: STIMTemporal(weighted="yes"), "weighted"),
                         (lambda: STIMTemporal(chunk_size=0), "chunk_size"),
                         (lambda: STIMTemporal(saliency_backend="cuda"), "saliency_backend")]:
        with pytest.raises(ValueError, match=needle):
            make()


# ------------------------------------------------------------------------------------- on the small presets
#: r per block -> tokens per block and the grid after the last block. UMT / VideoMAE: 4 frames x 16 positions:
#: 16 = one round at every position (the grid loses a frame), 5 = a partial round (the grid is lost).
#: ViFi-CLIP: rows of CLS + 16 tokens, 4 frames: every row loses r, the grid stays.
STIM_COUNTS = {
    "umt_tiny": ([16, 16, 5], [48, 32, 27], None),
    "videomae_tiny": ([16, 16, 0], [48, 32, 32], TokenGrid(2, 16)),
    "vificlip_tiny": ([4, 2, 2], [13, 11, 9], TokenGrid(4, 8, 1, True)),
}


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("name", PRESETS)
def test_token_counts_and_grid_on_presets(name, weighted):
    """Every block removes the schedule's r; the grid as documented; the CLS (ViFi-CLIP) stays itself; explicit ==
    fused (1e-5 of the largest output) unweighted. Weighted, the random-weight presets attend almost uniformly, so
    the entropies of a position's frames differ by ~1e-5 and STIM-TM's min-max over them (eps 1e-6) turns fp32
    rounding into weight differences of ~1e-2: the unit tests above compare the weighted paths on sharp
    attention instead."""
    model, video = preset(name)
    enc = find_mergeable(model)[0]
    r, counts, grid = STIM_COUNTS[name]
    outs = {}
    for attention in ("explicit", "fused"):
        apply_merge(model, MergeSetting(method="stim_temporal", r=r, attention=attention, trace_source=True,
                                        method_options={"weighted": weighted}))
        state = enc.new_merge_state()
        with torch.no_grad():
            outs[attention] = enc(video, state)
        assert state.tokens_per_layer == counts == token_counts(r, enc.num_tokens, enc.num_prefix_tokens)
        assert state.grid == grid and torch.isfinite(outs[attention]).all()
        for p in range(enc.num_prefix_tokens):
            assert state.source[:, p, p].eq(1).all() and state.source[:, p].sum(dim=-1).eq(1).all()
            assert state.size[:, p].eq(1).all()
    unpatch(model)
    if not weighted:
        err = (outs["explicit"] - outs["fused"]).abs().max().item()
        assert err < 1e-5 * max(1.0, outs["explicit"].abs().max().item()), err
