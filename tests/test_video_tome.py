"""tome_video (``merging.video_tome.VideoToMe``): the video study's modes against their code re-implemented
literally below (sjpollard/video-how-do-your-tokens-merge @21261a9, ``tome/merge.py`` and the per-frame regrouping
of ``tome/patch/timesformer.py``) on the same inputs, a hand-worked temporal example, r = 0, token counts and grids
on the small presets, and the one-line errors."""
from __future__ import annotations

import math

import pytest
import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import (
    AttentionInfo, MergeSetting, MergeState, TokenGrid, ToMe, apply_merge, build_method, find_mergeable,
    token_counts, unpatch,
)
from vidtldr_pl.merging.video_tome import MODES, NEIGHBOURHOODS, VideoToMe

TOL = 1e-6  # float32, the same operations in a different order at most


# ----------------------------------------------------------------- theirs, literally (tome/merge.py), trimmed to
# the branches used (no distill token, no unmerge)
def their_bipartite_soft_matching(metric, r, class_token=False, mode="merge"):
    protected = 1 if class_token else 0
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def their_bipartite_soft_matching_drop(metric, r, class_token=False):
    protected = 1 if class_token else 0
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        und_idx = edge_idx[..., r:, :]
        if class_token:
            und_idx = und_idx.sort(dim=1)[0]

    def drop(x):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        und = src.gather(dim=-2, index=und_idx.expand(n, t1 - r, c))
        return torch.cat([und, dst], dim=1)

    return drop


def their_bipartite_soft_matching_hybrid(metric, r, class_token=False, threshold=0.0):
    protected = 1 if class_token else 0
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        # Drop destination tokens that score under threshold
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), (node_max[..., None].gather(dim=-2, index=edge_idx)
                                                                >= threshold).type(dst.type()).expand(n, -1, c),
                                 reduce="prod")
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def their_merge_wavg(merge, x, size=None):
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def their_mode(mode, metric, r, class_token, threshold, x):
    """(x', size' or None) of one of their reductions on rows x with keys metric."""
    if mode == "merge":
        return their_merge_wavg(their_bipartite_soft_matching(metric, r, class_token), x)
    if mode == "hybrid":
        return their_merge_wavg(their_bipartite_soft_matching_hybrid(metric, r, class_token, threshold), x)
    return their_bipartite_soft_matching_drop(metric, r, class_token)(x), None


# ----------------------------------------------------------------- helpers
def _inputs(b=2, frames=3, per_frame=8, prefix=1, c=6, d=4, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = prefix + frames * per_frame
    return torch.randn(b, n, c, generator=g), torch.randn(b, heads, n, d, generator=g), TokenGrid(
        frames=frames, per_frame=per_frame, prefix=prefix)


def _split_threshold(metric, r, class_token):
    """A threshold between the matched pairs' scores (the median of the r best per row), so that hybrid drops some
    destinations and merges others."""
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[..., ::2, :] @ m[..., 1::2, :].transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -math.inf
    return scores.max(dim=-1)[0].sort(dim=-1, descending=True)[0][:, :r].median().item()


def _run(method, x, k, grid, r, prefix):
    method.protected = prefix
    state = MergeState(grid=grid, trace_source=True)
    out = method(x, state, AttentionInfo(k=k), r)
    return out, state


@pytest.mark.parametrize("mode", ["merge", "drop", "hybrid"])
def test_joint_equals_theirs(mode):
    """Joint rows with a CLS (their ViViT patch): the same tokens, sizes and order as their functions."""
    x, k, grid = _inputs()
    metric = k.mean(dim=1)
    threshold = _split_threshold(metric, 7, True)
    expected, size = their_mode(mode, metric, 7, True, threshold, x)
    out, state = _run(VideoToMe(mode=mode, threshold=threshold), x, k, grid, 7, 1)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    if size is not None:
        torch.testing.assert_close(state.size, size, atol=TOL, rtol=0)
    assert state.grid is None  # joint merges cross frames


def test_hybrid_drops_some_destinations():
    """The threshold in this test splits the matched pairs: some destinations are dropped (hybrid != merge)."""
    x, k, grid = _inputs()
    merged, _ = _run(VideoToMe(mode="merge"), x, k, grid, 7, 1)
    threshold = _split_threshold(k.mean(dim=1), 7, True)
    hybrid, state = _run(VideoToMe(mode="hybrid", threshold=threshold), x, k, grid, 7, 1)
    assert not torch.allclose(merged, hybrid)
    # a dropped destination leaves its own patch out of the sources
    assert state.source.sum().item() < x.shape[0] * x.shape[1]


@pytest.mark.parametrize("mode", ["merge", "drop", "hybrid"])
def test_spatial_equals_theirs_per_frame(mode):
    """Per-frame neighbourhood: their TimeSformer regrouping (CLS set aside, one row per frame, each frame losing
    r_f tokens) on our frame-major layout; r = 3 x 3 over T = 3 frames."""
    x, k, grid = _inputs()
    b, c = x.shape[0], x.shape[-1]
    metric = k.mean(dim=1)
    frames_x = x[:, 1:].reshape(b * 3, 8, c)
    frames_m = metric[:, 1:].reshape(b * 3, 8, -1)
    threshold = _split_threshold(frames_m, 3, False)
    merged, size = their_mode(mode, frames_m, 3, False, threshold, frames_x)
    expected = torch.cat([x[:, :1], merged.reshape(b, -1, c)], dim=1)
    out, state = _run(VideoToMe(mode=mode, neighbourhood="spatial", threshold=threshold), x, k, grid, 10, 1)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    if size is not None:
        torch.testing.assert_close(state.size[:, 1:], size.reshape(b, -1, 1), atol=TOL, rtol=0)
        assert torch.all(state.size[:, 0] == 1)
    assert state.grid == TokenGrid(frames=3, per_frame=5, prefix=1)
    assert torch.all(state.source[:, 0, 0] == 1) and torch.all(state.source[:, 0].sum(-1) == 1)


def test_temporal_hand_worked():
    """Two frames of two positions (metric = hidden): each position's tube (frame 0, frame 1) merges into one token,
    the mean of the two; one frame of two tokens is left."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.2], [0.4, 4.0]]])  # frame 0: p0, p1; frame 1: p0, p1
    state = MergeState(grid=TokenGrid(frames=2, per_frame=2))
    out = VideoToMe(neighbourhood="temporal", metric="hidden")(x, state, None, 2)
    torch.testing.assert_close(out, torch.tensor([[[2.0, 0.1], [0.2, 3.0]]]), atol=TOL, rtol=0)
    assert state.size.flatten().tolist() == [2.0, 2.0]
    assert state.grid == TokenGrid(frames=1, per_frame=2)
    # drop: the frame-0 token of each tube goes
    state = MergeState(grid=TokenGrid(frames=2, per_frame=2))
    out = VideoToMe(mode="drop", neighbourhood="temporal", metric="hidden")(x, state, None, 3)
    assert torch.equal(out, x[:, 2:])


def test_temporal_matches_across_frames_of_one_position():
    """Each tube of T = 4 frames loses r // S tokens, merged only with tokens of the same position: source rows stay
    within their position."""
    x, k, grid = _inputs(frames=4, per_frame=5, prefix=1)
    out, state = _run(VideoToMe(neighbourhood="temporal"), x, k, grid, 11, 1)  # 11 // 5 = 2 per position
    assert out.shape[1] == 1 + 2 * 5 and state.grid == TokenGrid(frames=2, per_frame=5, prefix=1)
    position = (torch.arange(20) % 5)
    for t in range(2):
        for s in range(5):
            holds = state.source[0, 1 + t * 5 + s, 1:].nonzero().flatten()
            assert torch.all(position[holds] == s)


def test_random_drop_drops_even_tokens_only_deterministically():
    x, k, grid = _inputs()
    out, state = _run(VideoToMe(mode="random_drop", seed=3), x, k, grid, 7, 1)
    again, _ = _run(VideoToMe(mode="random_drop", seed=3), x, k, grid, 7, 1)
    other, _ = _run(VideoToMe(mode="random_drop", seed=4), x, k, grid, 7, 1)
    assert torch.equal(out, again) and not torch.equal(out, other)
    kept = state.source[0].argmax(dim=-1)
    dropped = sorted(set(range(x.shape[1])) - set(kept.tolist()))
    assert len(dropped) == 7 and all(i % 2 == 0 and i > 0 for i in dropped)  # a tokens, never the CLS
    assert torch.equal(out[0], x[0, kept])


def test_joint_merge_is_tome_bit_for_bit():
    x, k, grid = _inputs()
    ours, _ = _run(VideoToMe(), x, k, grid, 9, 1)
    tome, _ = _run(ToMe(), x, k, grid, 9, 1)
    assert torch.equal(ours, tome)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS)
def test_r_zero_and_too_small_r_leave_x_unchanged(mode, neighbourhood):
    x, k, grid = _inputs()
    out, state = _run(VideoToMe(mode=mode, neighbourhood=neighbourhood), x, k, grid, 0, 1)
    assert out is x and state.size is None and state.grid == grid
    if neighbourhood != "joint":  # fewer than one token per group: nothing to remove
        out, state = _run(VideoToMe(mode=mode, neighbourhood=neighbourhood), x, k, grid, 2, 1)
        assert out is x and state.grid == grid


def test_errors():
    x, k, _ = _inputs()
    with pytest.raises(ValueError, match="mode 'blend'"):
        VideoToMe(mode="blend")
    with pytest.raises(ValueError, match="neighbourhood 'local'"):
        build_method("tome_video", neighbourhood="local")
    with pytest.raises(ValueError, match="temporal.*no token grid"):
        VideoToMe(neighbourhood="temporal")(x, MergeState(), AttentionInfo(k=k), 8)
    one = TokenGrid(frames=1, per_frame=24, prefix=1)
    with pytest.raises(ValueError, match="temporal.*one frame"):
        VideoToMe(neighbourhood="temporal")(x, MergeState(grid=one), AttentionInfo(k=k), 8)
    # spatial without a grid (an image model): the whole row, as joint
    out, _ = _run(VideoToMe(neighbourhood="spatial"), x, k, None, 7, 1)
    joint, _ = _run(VideoToMe(), x, k, None, 7, 1)
    assert torch.equal(out, joint)


def test_rows_of_different_counts():
    """Padded rows (MergeState.count) run group by group without a grid (``merging.rows``): each row as if alone;
    "spatial" is then "joint", "temporal" the ValueError."""
    x, k, grid = _inputs()
    for mode in MODES:
        method = VideoToMe(mode=mode, neighbourhood="spatial", protected=1)
        state = MergeState(grid=grid, count=torch.tensor([25, 19]))
        out = method(x, state, AttentionInfo(k=k), 6)
        assert state.count.tolist() == [19, 13] and out.shape[1] == 19
        alone, _ = _run(VideoToMe(mode=mode, neighbourhood="joint"), x[1:, :19], k[1:, :, :19], None, 6, 1)
        torch.testing.assert_close(out[1:, :13], alone, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="temporal"):
        VideoToMe(neighbourhood="temporal", protected=1)(x, MergeState(grid=grid, count=torch.tensor([25, 19])),
                                                         AttentionInfo(k=k), 6)


# ----------------------------------------------------------------- the small presets
PRESET_COUNTS = {  # tokens after each block for r = [n/4, n/8, n/16, 0...] (n: tokens of the preset's input)
    ("umt_tiny", "joint"): [48, 40, 36, 36], ("umt_tiny", "spatial"): [48, 40, 36, 36],
    ("umt_tiny", "temporal"): [48, 48, 48, 48],
    ("videomae_tiny", "joint"): [24, 20, 18, 18], ("videomae_tiny", "spatial"): [24, 20, 18, 18],
    ("videomae_tiny", "temporal"): [32, 32, 32, 32],
    ("vificlip_tiny", "joint"): [13, 11, 10], ("vificlip_tiny", "spatial"): [13, 11, 10],
}


@pytest.mark.parametrize("preset", ["umt_tiny", "videomae_tiny", "vificlip_tiny"])
def test_presets_counts_grid_and_r_zero(preset):
    """Every mode and neighbourhood on the small presets: tokens per block as listed (= token_counts with the method
    and the input's grid), finite outputs, r = 0 equal to the unpatched encoder; temporal on the frame-wise
    ViFi-CLIP rows is the one-line ValueError."""
    torch.manual_seed(0)
    model = create_model(preset).eval()
    enc = find_mergeable(model)[0]
    video = torch.randn_like(enc.example_input(2))
    n, depth = enc.num_tokens, len(enc.blocks)
    r = [n // 4, n // 8, n // 16]
    with torch.no_grad():
        plain_state = enc.new_merge_state()
        plain = enc(video, plain_state)
        grid = plain_state.grid
        for mode in MODES:
            for nb in NEIGHBOURHOODS:
                options = {"mode": mode, "neighbourhood": nb}
                if (preset, nb) not in PRESET_COUNTS:  # refused when applied (apply_merge counts the tokens)
                    with pytest.raises(ValueError, match="temporal"):
                        apply_merge(model, MergeSetting(method="tome_video", r=r, method_options=options))
                    continue
                apply_merge(model, MergeSetting(method="tome_video", r=r, method_options=options))
                state = enc.new_merge_state()
                out = enc(video, state)
                method = enc.merge_settings.method
                expected = token_counts(list(enc.merge_settings.schedule), n, method.protected, method=method,
                                        grid=grid)
                assert state.tokens_per_layer == expected == PRESET_COUNTS[(preset, nb)][:depth], (mode, nb)
                assert torch.isfinite(out).all()
                apply_merge(model, MergeSetting(method="tome_video", r=0, method_options=options))
                assert torch.equal(enc(video, enc.new_merge_state()), plain)
    unpatch(model)
