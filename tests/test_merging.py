"""Merging core: schedules, methods, patch/unpatch, fused vs explicit saliency, gradients."""
from __future__ import annotations

import pytest
import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import (
    AttentionInfo, MergeState, RandomMerge, ScheduleError, ToMe, VidTLDR, bipartite_soft_matching, build_method,
    build_schedule, effective_r, negative_entropy_from_probs, negative_entropy_from_qk, patch, token_counts, unpatch,
    vidtldr_saliency,
)


# ---------------------------------------------------------------- schedules
def test_schedule_forms():
    assert build_schedule([600, 200, 100], 12) == [600, 200, 100] + [0] * 9
    assert build_schedule("600,200,100", 4) == [600, 200, 100, 0]
    assert build_schedule(8, 3) == [8, 8, 8]
    assert build_schedule(0.25, 4, layers=[0, 2]) == [0.25, 0, 0.25, 0]
    assert build_schedule(None, 2) == [0, 0]
    assert build_schedule([100.0, 0.5], 2) == [100, 0.5] and isinstance(build_schedule([100.0], 1)[0], int)


@pytest.mark.parametrize("r,layers,needle", [
    ([1] * 13, None, "13 entries but the model has only 12 blocks"),
    ([600, -1], None, "r[1] = -1 is negative"),
    ([600, "a"], None, "r[1] = 'a' is not a number"),
    ([True], None, "is not a number"),
    ([2.5], None, "must be a whole number"),
    ("600,abc", None, "not a number"),
    (5, [12], "layer 12 is out of range"),
    ([5], [0], "not both"),
    (float("nan"), None, "not finite"),
])
def test_schedule_errors(r, layers, needle):
    with pytest.raises(ScheduleError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        build_schedule(r, 12, layers)


def test_effective_r_and_token_counts(caplog):
    assert effective_r(0.3, 197) == 59 and effective_r(60, 100) == 50 and effective_r(60, 100, protected=1) == 49
    assert token_counts(build_schedule([600, 200, 100], 12), 2352)[:4] == [1752, 1552, 1452, 1452]
    assert token_counts(build_schedule([600, 200, 100], 12), 1568)[:3] == [968, 768, 668]
    with caplog.at_level("WARNING"):
        assert token_counts([60, 60], 100) == [50, 25]
    assert "capped" in caplog.text


# ---------------------------------------------------------------- saliency
def test_chunked_saliency_equals_explicit():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 4, 300, 16, generator=g), torch.randn(2, 4, 300, 16, generator=g)
    probs = (q @ k.transpose(-1, -2)).softmax(-1)
    raw_explicit, raw_chunked = negative_entropy_from_probs(probs), negative_entropy_from_qk(q, k, chunk_size=64)
    assert (raw_explicit - raw_chunked).abs().max() < 1e-5 * raw_explicit.abs().max()
    s1, s2 = vidtldr_saliency(AttentionInfo(probs=probs)), vidtldr_saliency(AttentionInfo(q=q, k=k), chunk_size=64)
    assert torch.equal(s1 > 0, s2 > 0) and (s1 - s2).abs().max() < 1e-5
    assert s1.max() == 1 and s1.min() == 0 and ((s1 == 0).float().mean() > 0.2)


def test_saliency_is_head_mean_first():
    """The entropy of the head-averaged map, not the mean of per-head entropies."""
    probs = torch.softmax(torch.randn(1, 3, 10, 10) * 3, dim=-1)
    p = probs.mean(1)
    expected = (p * p.log()).sum(-1, keepdim=True)
    per_head = (probs * probs.log()).sum(-1).mean(1)[..., None]
    assert torch.allclose(negative_entropy_from_probs(probs), expected)
    assert not torch.allclose(expected, per_head)


# ---------------------------------------------------------------- methods
def _tokens(b=2, n=50, c=8, seed=0):
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed))


def test_tome_preserves_mass_and_traces_sources():
    x = _tokens()
    state = MergeState(trace_source=True)
    y = ToMe(metric="hidden")(x, state, None, 10)
    assert y.shape == (2, 40, 8)
    assert torch.allclose(state.size.sum(1), torch.full((2, 1), 50.0))
    assert torch.equal(state.source.sum(1), torch.ones(2, 50))  # every patch in exactly one token
    # size-weighted average: sum of size * x is preserved
    assert torch.allclose((y * state.size).sum(1), x.sum(1), atol=1e-4)


def test_tome_protected_token_stays_first():
    x = _tokens()
    x[:, 0] = x[:, 1]  # the CLS token would be the best match of all
    state = MergeState()
    y = ToMe(metric="hidden", protected=1)(x, state, None, 20)
    assert torch.equal(y[:, 0], x[:, 0]) and state.size[:, 0].eq(1).all()


def test_vidtldr_drops_background_sources():
    x = _tokens(n=64)
    probs = torch.softmax(torch.randn(2, 4, 64, 64) * 4, dim=-1)
    state = MergeState(trace_source=True)
    y = VidTLDR()(x, state, AttentionInfo(probs=probs), 16)
    assert y.shape[1] == 48
    dropped = state.source.sum(1) == 0
    assert dropped.any()  # background merged sources vanish
    assert (state.size.sum(1) < 64).all()


def test_random_merge_is_a_method():
    m = build_method("random", seed=0)
    assert isinstance(m, RandomMerge)
    state = MergeState()
    assert m(_tokens(), state, None, 7).shape == (2, 43, 8) and state.size.sum().item() == 100


def test_matching_output_order_is_positional():
    plan = bipartite_soft_matching(_tokens(n=20), 4)
    assert torch.equal(plan.unm_idx, plan.unm_idx.sort(dim=-2)[0])


def test_build_method_errors():
    with pytest.raises(ValueError, match="unknown merge method 'tomato'"):
        build_method("tomato")
    assert build_method("none") is None and isinstance(build_method("vid-TLDR"), VidTLDR)
    with pytest.raises(ValueError, match="metric"):
        ToMe(metric="queries")


# ---------------------------------------------------------------- patch on a real encoder
@pytest.fixture()
def tiny_encoder():
    """A tiny UMT vision encoder with non-degenerate weights: std 0.02 init gives near-uniform attention, where
    the min-max normalised saliency is all rounding noise."""
    enc = create_model("umt_tiny").vision_encoder.eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5 * (2.0 if "qkv" in name else 1.0))
    return enc


def _video(seed=0):
    return torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["fused", "flex"])
@pytest.mark.parametrize("method", ["vidtldr", "tome"])
def test_fast_attention_equals_explicit(tiny_encoder, method, mode):
    patch(tiny_encoder, method, r=[20, 10, 0.25])
    with torch.no_grad():
        tiny_encoder.encoder.set_attention("explicit")
        ref, _, s_ref = tiny_encoder(_video(), return_state=True)
        tiny_encoder.encoder.set_attention(mode)
        out, _, s_out = tiny_encoder(_video(), return_state=True)
    assert s_ref.tokens_per_layer == s_out.tokens_per_layer == [44, 34, 26, 26]
    assert (ref - out).abs().max() < 1e-4 and (s_ref.size - s_out.size).abs().max() < 1e-5


def test_patch_unpatch_roundtrip(tiny_encoder):
    with torch.no_grad():
        base = tiny_encoder(_video())[0]
        patch(tiny_encoder, "vidtldr", r=8, layers=[1])
        merged, _, state = tiny_encoder(_video(), return_state=True)
        assert state.tokens_per_layer == [64, 56, 56, 56] and merged.shape[1] == 56
        unpatch(tiny_encoder)
        assert torch.equal(tiny_encoder(_video())[0], base)
        patch(tiny_encoder, "none", r=[8])
        assert torch.equal(tiny_encoder(_video())[0], base)
    with pytest.raises(ScheduleError, match="only 4 blocks"):
        patch(tiny_encoder, "vidtldr", r=[1, 1, 1, 1, 1])
    with pytest.raises(TypeError, match="Linear is not a model vidtldr_pl can merge in place; supported: "):
        patch(torch.nn.Linear(2, 2), "vidtldr", r=[1])


def test_state_does_not_leak_between_forwards(tiny_encoder):
    patch(tiny_encoder, "vidtldr", r=[16], trace_source=True)
    with torch.no_grad():
        _, _, s1 = tiny_encoder(_video(0), return_state=True)
        _, _, s2 = tiny_encoder(_video(0), return_state=True)
    assert s1 is not s2 and torch.equal(s1.size, s2.size) and s1.source.shape == (2, 48, 64)


def test_gradients_flow_through_merged_tokens(tiny_encoder):
    patch(tiny_encoder, "vidtldr", r=[16, 8])
    tiny_encoder.train()
    video = _video().requires_grad_(True)
    tokens, pooled = tiny_encoder(video)
    pooled.pow(2).sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tiny_encoder.encoder.blocks[0].parameters())


def test_position_table_interpolation():
    from vidtldr_pl.backbones.layers import position_table, sincos_table

    assert torch.equal(position_table(4, 16, 32), sincos_table(64, 32)[None])
    interp = position_table(8, 16, 32, ckpt_frames=4)
    table = sincos_table(64, 32).reshape(4, 16, 32)
    assert interp.shape == (1, 128, 32)
    # linear interpolation in time (align_corners=False): output frame 1 = 0.75 * frame 0 + 0.25 * frame 1
    assert torch.allclose(interp[0, 16:32], 0.75 * table[0] + 0.25 * table[1], atol=1e-6)


def test_bad_video_shape(tiny_encoder):
    with pytest.raises(ValueError, match=r"expected video \(B, 3, T, 64, 64\)"):
        tiny_encoder(torch.zeros(1, 3, 4, 32, 32))


@pytest.mark.parametrize("method", ["vidtldr", "tome", "vidtldr_repshift", "random_drop", "saliency_drop", "repshift_drop"])
def test_merging_compiles_as_one_graph(tiny_encoder, method):
    """fullgraph=True fails on any graph break: the merge step (matching, saliency, merge, sizes, proportional
    attention) has no host syncs or data-dependent Python, so torch.compile / CUDA graphs take the whole encoder."""
    patch(tiny_encoder, method, r=[20, 10, 0.25], trace_source=True)
    try:
        with torch.no_grad():
            ref, _, s_ref = tiny_encoder(_video(), return_state=True)
            compiled = torch.compile(tiny_encoder, fullgraph=True, backend="aot_eager")
            out, _, s_out = compiled(_video(), return_state=True)
    finally:
        torch._dynamo.reset()
    assert s_out.tokens_per_layer == s_ref.tokens_per_layer == [44, 34, 26, 26]
    assert torch.equal(out, ref) and torch.equal(s_out.source, s_ref.source)
