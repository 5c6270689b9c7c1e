"""PiToMe (``merging.pitome.PiToMe``): against the authors' code re-implemented literally below (hchautran/PiToMe,
``algo/pitome/merge.py``: ``pitome_vision``, ``pitome``, ``pitome_bsm``, ``merge_wavg``) on the same inputs, a
hand-worked example, r = 0, token counts on the small presets, the margin schedule and the errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import (
    AttentionInfo, MergeSetting, MergeState, TokenGrid, apply_merge, build_method, find_mergeable, token_counts,
    unpatch,
)
from vidtldr_pl.merging.pitome import PiToMe, energy_scores

TOL = 1e-6  # float32, the same operations


# ----------------------------------------------------------------- theirs, literally (algo/pitome/merge.py)
def their_pitome(metric=None, class_token=False, indices=None, scores=None, r=None):
    B, T, T = scores.shape
    merge_idx = indices[..., :2 * r]
    protected_idx = indices[..., 2 * r:]
    a_idx, b_idx = merge_idx[..., ::2], merge_idx[..., 1::2]
    scores = scores.gather(dim=-1, index=b_idx.unsqueeze(-2).expand(B, T, r))
    scores = scores.gather(dim=-2, index=a_idx.unsqueeze(-1).expand(B, r, r))
    _, dst_idx = scores.max(dim=-1)

    def merge(x, mode="mean"):
        if class_token:
            x_cls = x[:, 0, :].unsqueeze(1)
            x = x[:, 1:, :]
        B, T, C = x.shape
        batch_idx = torch.arange(B).unsqueeze_(1).to(metric.device)
        protected = x[batch_idx, protected_idx, :]
        src, dst = x[batch_idx, a_idx, :], x[batch_idx, b_idx, :]
        if mode != "prune":
            dst = dst.scatter_reduce(-2, dst_idx.unsqueeze(2).expand(B, r, C), src, reduce=mode)
        if class_token:
            return torch.cat([x_cls, protected, dst], dim=1)
        return torch.cat([protected, dst], dim=1)

    return merge


def their_pitome_bsm(metric=None, class_token=False, indices=None, scores=None, r=None):
    with torch.no_grad():
        B, T, _ = scores.shape
        a_idx, b_idx = indices[..., ::2], indices[..., 1::2]
        batch_idx = torch.arange(B).unsqueeze_(1).to(metric.device)
        scores = scores.gather(dim=-1, index=b_idx.unsqueeze(-2).expand(B, T, b_idx.shape[-1]))
        scores = scores.gather(dim=-2, index=a_idx.unsqueeze(-1).expand(B, a_idx.shape[-1], b_idx.shape[-1]))
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x, mode="mean"):
        if class_token:
            x_cls = x[:, 0, :].unsqueeze(1)
            x = x[:, 1:, :]
        src, dst = x[batch_idx, a_idx, :], x[batch_idx, b_idx, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        if mode != "prune":
            src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
            dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        if class_token:
            return torch.cat([x_cls, unm, dst], dim=1)
        return torch.cat([unm, dst], dim=1)

    return merge


def their_pitome_vision(metric, ratio=1.0, margin=0.5, class_token=False, alpha=1.0, use_bsm_pitome=False):
    with torch.no_grad():
        if class_token:
            metric = metric[:, 1:, :]
        B, T, C = metric.shape
        r = math.floor(T - T * ratio)
        metric = F.normalize(metric, p=2, dim=-1)
        sim = metric @ metric.transpose(-1, -2)
        energy_score = F.elu((sim - margin), alpha=alpha).mean(dim=-1)
        indices = torch.argsort(energy_score, descending=True)
        if use_bsm_pitome:
            return their_pitome_bsm(metric=metric, class_token=class_token, indices=indices, scores=sim, r=r)
        return their_pitome(metric=metric, class_token=class_token, indices=indices, scores=sim, r=r)


def their_merge_wavg(merge, x, size=None):
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


# ----------------------------------------------------------------- tests
def _inputs(b=2, n=1 + 24, c=8, d=6, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g), torch.randn(b, heads, n, d, generator=g)


@pytest.mark.parametrize("matching", ["pitome", "bsm"])
@pytest.mark.parametrize("layer", [0, 5])
def test_equals_theirs(matching, layer):
    """One block with a CLS, r = 6 of 24 (their ratio 0.75): the same tokens, sizes and order. Block ``layer``
    uses their margin schedule 0.75 - 0.75 layer / 12. Then a second block on the merged tokens (sizes carried)."""
    x, k = _inputs()
    margin = 0.75 - 0.75 * layer / 12
    merge = their_pitome_vision(k.mean(dim=1), ratio=0.75, margin=margin, class_token=True,
                                use_bsm_pitome=matching == "bsm")
    expected, size = their_merge_wavg(merge, x)
    state = MergeState(tokens_per_layer=[0] * layer)
    method = PiToMe(matching=matching, protected=1)
    out = method(x, state, AttentionInfo(k=k), 6)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(state.size, size, atol=TOL, rtol=0)
    # the next block: 19 tokens (18 after the CLS), r = 4 (their ratio 14 / 18 -> floor(18 - 14) = 4)
    g = torch.Generator().manual_seed(1)
    k2 = torch.randn(2, 2, 19, 6, generator=g)
    state.tokens_per_layer.append(19)
    merge = their_pitome_vision(k2.mean(dim=1), ratio=14 / 18, margin=0.75 - 0.75 * (layer + 1) / 12,
                                class_token=True, use_bsm_pitome=matching == "bsm")
    expected, size = their_merge_wavg(merge, expected, size)
    out = method(out, state, AttentionInfo(k=k2), 4)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(state.size, size, atol=TOL, rtol=0)


def test_hand_worked():
    """Keys t0 = t1 = (1, 0), t2 = (0, 1), t3 = (0, -1); margin 0.5, alpha 1. Cosines: t0-t1 1, t0/t1-t2/t3 0,
    t2-t3 -1. Energies: t0 = t1 = (0.5 + 0.5 + 2 (e^-0.5 - 1)) / 4 = 0.0533; t2 = t3 = (0.5 + 2 (e^-0.5 - 1)
    + e^-1.5 - 1) / 4 = -0.2660. r = 1: the two highest (t0, t1) form A = (t0), B = (t1); t0 merges into t1; t2, t3
    (isolated) are kept. Out: t2, t3, then (x0 + x1) / 2 = ((2, 0) + (4, 2)) / 2 = (3, 1) of size 2."""
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    energy, _ = energy_scores(keys[None], 0.5)
    e0 = (1.0 + 2 * (math.exp(-0.5) - 1)) / 4
    e2 = (0.5 + 2 * (math.exp(-0.5) - 1) + math.exp(-1.5) - 1) / 4
    torch.testing.assert_close(energy[0], torch.tensor([e0, e0, e2, e2]), atol=TOL, rtol=0)
    x = torch.tensor([[[2.0, 0.0], [4.0, 2.0], [7.0, 7.0], [-5.0, 1.0]]])
    state = MergeState(trace_source=True)
    out = PiToMe(margin=0.5)(x, state, AttentionInfo(k=keys[None, None]), 1)
    torch.testing.assert_close(out, torch.tensor([[[7.0, 7.0], [-5.0, 1.0], [3.0, 1.0]]]), atol=TOL, rtol=0)
    assert state.size.flatten().tolist() == [1.0, 1.0, 2.0]
    assert state.source[0].tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]


def test_isolated_tokens_are_protected():
    """A token far from all others (lowest energy) is never merged, even at the largest r."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 1, 4, generator=g)
    keys = base + 0.05 * torch.randn(1, 15, 4, generator=g)
    keys = torch.cat([keys, -base], dim=1)  # token 15: opposite to the cluster
    x = torch.randn(1, 16, 3, generator=g)
    state = MergeState(trace_source=True)
    PiToMe(margin=0.5)(x, state, AttentionInfo(k=keys[:, None]), 8)
    alone = state.source[0, :, 15].nonzero().flatten()
    assert len(alone) == 1 and state.source[0, alone[0]].sum() == 1


def test_r_zero_margin_schedule_and_errors():
    x, k = _inputs()
    state = MergeState()
    assert PiToMe(protected=1)(x, state, AttentionInfo(k=k), 0) is x and state.size is None
    m = PiToMe(depth=4)
    assert [m.margin_at(i) for i in range(4)] == [0.75, 0.5625, 0.375, 0.1875]
    assert PiToMe(margin=0.3).margin_at(7) == 0.3
    with pytest.raises(ValueError, match="matching 'greedy'"):
        build_method("pitome", matching="greedy")
    with pytest.raises(ValueError, match="margin"):
        PiToMe(margin=2.0)
    with pytest.raises(ValueError, match="depth"):
        PiToMe(depth=0)
    state = MergeState(count=torch.tensor([25, 19]))  # padded rows: each row as if alone (merging.rows)
    out = PiToMe(protected=1)(x, state, AttentionInfo(k=k), 4)
    alone = PiToMe(protected=1)(x[1:, :19], MergeState(), AttentionInfo(k=k[1:, :, :19]), 4)
    assert state.count.tolist() == [21, 15]
    torch.testing.assert_close(out[1:, :15], alone, atol=TOL, rtol=0)
    grid = TokenGrid(frames=4, per_frame=24, prefix=1, framewise=True)
    state = MergeState(grid=grid)
    PiToMe(protected=1)(x, state, AttentionInfo(k=k), 4)
    assert state.grid == TokenGrid(frames=4, per_frame=20, prefix=1, framewise=True)  # one frame per row: kept
    state = MergeState(grid=TokenGrid(frames=2, per_frame=12, prefix=1))
    PiToMe(protected=1)(x, state, AttentionInfo(k=k), 4)
    assert state.grid is None  # merges across frames


PRESET_COUNTS = {"umt_tiny": [48, 40, 36, 36], "videomae_tiny": [24, 20, 18, 18], "vificlip_tiny": [13, 11, 10]}


@pytest.mark.parametrize("preset", sorted(PRESET_COUNTS))
def test_presets(preset):
    """Both matchings on the small presets (r = n/4, n/8, n/16): the token counts listed (= token_counts), finite
    outputs, the CLS untouched; r = 0 equal to the unpatched encoder."""
    torch.manual_seed(0)
    model = create_model(preset).eval()
    enc = find_mergeable(model)[0]
    video = torch.randn_like(enc.example_input(2))
    n, depth = enc.num_tokens, len(enc.blocks)
    with torch.no_grad():
        plain = enc(video, enc.new_merge_state())
        for matching in ("pitome", "bsm"):
            options = {"matching": matching, "depth": depth}
            apply_merge(model, MergeSetting(method="pitome", r=[n // 4, n // 8, n // 16], method_options=options,
                                            trace_source=True))
            state = enc.new_merge_state()
            out = enc(video, state)
            expected = token_counts(list(enc.merge_settings.schedule), n, enc.num_prefix_tokens)
            assert state.tokens_per_layer == expected == PRESET_COUNTS[preset][:depth]
            assert torch.isfinite(out).all()
            for p in range(enc.num_prefix_tokens):
                assert torch.all(state.source[:, p, p] == 1) and torch.all(state.source[:, p].sum(-1) == 1)
            apply_merge(model, MergeSetting(method="pitome", r=0, method_options=options))
            assert torch.equal(enc(video, enc.new_merge_state()), plain)
    unpatch(model)
