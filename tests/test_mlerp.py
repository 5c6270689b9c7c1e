"""ToFu's MLERP merge operator (``merging.matching.merge_mlerp``, ``MergeMethod(merge_op=...)``): hand-worked
values, the norm it preserves, fp32 accumulation, "mean" unchanged, and every merging method accepting it."""
from __future__ import annotations

import math

import pytest
import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import (
    MergePlan, MergeSetting, MergeState, apply_merge, bipartite_soft_matching, build_method, find_mergeable,
    merge_tokens, merge_wavg, unpatch,
)
from vidtldr_pl.merging.matching import MERGE_OPS, merge_mlerp
from vidtldr_pl.merging.state import AttentionInfo

MERGING = ["tome", "vidtldr", "random", "vidtldr_repshift", "tome_video", "pitome"]


def _plan_t0_into_t1() -> MergePlan:
    """Three tokens: a = (t0, t2), b = (t1); t0 merges into t1, t2 stays."""
    return MergePlan(src_idx=torch.tensor([[[0]]]), dst_idx=torch.tensor([[[0]]]), unm_idx=torch.tensor([[[1]]]))


def test_mlerp_hand_worked():
    """(3, 0) + (0, 4): the average (1.5, 2) has norm 2.5; rescaled to max(3, 4) = 4 -> (2.4, 3.2). Sizes (3, 1):
    average (2.25, 1), norm sqrt(6.0625), rescaled to 4. The unmerged token is untouched. Tolerance 1e-6."""
    x = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]]])
    out, size = merge_mlerp(_plan_t0_into_t1(), x, None)
    torch.testing.assert_close(out, torch.tensor([[[1.0, 1.0], [2.4, 3.2]]]), atol=1e-6, rtol=0)
    assert size.flatten().tolist() == [1.0, 2.0]
    out, size = merge_mlerp(_plan_t0_into_t1(), x, torch.tensor([[[3.0], [1.0], [2.0]]]))
    expected = torch.tensor([2.25, 1.0]) / math.sqrt(2.25**2 + 1) * 4
    torch.testing.assert_close(out[0, 1], expected, atol=1e-6, rtol=0)
    assert out[0, 0].tolist() == [1.0, 1.0] and size.flatten().tolist() == [2.0, 4.0]


def test_mlerp_keeps_the_largest_norm_of_each_group():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 21, 16, generator=g)
    plan = bipartite_soft_matching(torch.randn(2, 21, 8, generator=g), 7)
    out, size = merge_mlerp(plan, x, None)
    top = merge_tokens(plan, x.norm(dim=-1, keepdim=True), mode="amax")
    members = merge_tokens(plan, torch.ones_like(x[..., :1]), mode="sum")
    merged = members[..., 0] > 1
    torch.testing.assert_close(out.norm(dim=-1)[merged], top[..., 0][merged], atol=0, rtol=1e-5)
    mean, mean_size = merge_wavg(plan, x, None)
    assert torch.equal(out[~merged], mean[~merged]) and torch.equal(size, mean_size)
    cos = torch.nn.functional.cosine_similarity(out[merged], mean[merged], dim=-1)
    assert torch.all(cos > 1 - 1e-5)  # the direction is the average's


def test_mlerp_ignores_size_zero_tokens_and_zero_weight_sources():
    """A destination of size 0 (dropped by the video study's hybrid mode) and a source of weight 0 do not enter the
    maximum: merging (3, 0) [size 0] with (0, 4) gives (0, 4) itself."""
    x = torch.tensor([[[0.0, 4.0], [30.0, 0.0], [1.0, 1.0]]])
    out, size = merge_mlerp(_plan_t0_into_t1(), x, torch.tensor([[[1.0], [0.0], [1.0]]]))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 4.0]), atol=1e-6, rtol=0)
    assert size[0, 1].item() == 1.0
    plan = _plan_t0_into_t1()
    plan.src_weight = torch.zeros(1, 1, 1)
    out, _ = merge_mlerp(plan, torch.tensor([[[30.0, 0.0], [0.0, 4.0], [1.0, 1.0]]]), None)
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 4.0]), atol=1e-6, rtol=0)


def test_mlerp_accumulates_in_float32():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 33, 64, generator=g) * 8
    plan = bipartite_soft_matching(x, 12)
    ref, _ = merge_mlerp(plan, x, None)
    half, _ = merge_mlerp(plan, x.bfloat16(), None)
    assert half.dtype == torch.bfloat16
    # one rounding at the end: the bf16 result is the fp32 result of the bf16 input, rounded once
    once, _ = merge_mlerp(plan, x.bfloat16().float(), None)
    assert torch.equal(half, once.bfloat16())
    assert (half.float() - ref).abs().max().item() < 0.1


@pytest.mark.parametrize("name", MERGING)
def test_every_merging_method_accepts_merge_op(name):
    for op in MERGE_OPS:
        assert build_method(name, merge_op=op).merge_op == op
    assert build_method(name).merge_op == "mean"
    with pytest.raises(ValueError, match="merge_op"):
        build_method(name, merge_op="slerp")


def test_mean_is_unchanged_and_mlerp_changes_tome():
    """merge_op "mean" is merge_wavg bit for bit; "mlerp" merges the same tokens with larger norms."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 8, generator=g)
    k = torch.randn(2, 2, 16, 4, generator=g)
    plan = bipartite_soft_matching(k.mean(dim=1), 5, sort_unmerged=False)  # ToMe without a CLS
    expected, _ = merge_wavg(plan, x, None)
    out = build_method("tome")(x, MergeState(), AttentionInfo(k=k), 5)
    assert torch.equal(out, expected)
    state = MergeState()
    out_m = build_method("tome", merge_op="mlerp")(x, state, AttentionInfo(k=k), 5)
    assert out_m.shape == out.shape and not torch.equal(out_m, out)
    assert torch.all(out_m.norm(dim=-1) >= out.norm(dim=-1) - 1e-5)
    assert state.size.sum().item() == 32


@pytest.mark.parametrize("preset", ["umt_tiny", "videomae_tiny", "vificlip_tiny"])
def test_mlerp_on_presets(preset):
    """Every merging method with merge_op "mlerp" on the small presets: the schedule's token counts, finite output;
    r = 0 leaves the output unchanged."""
    torch.manual_seed(0)
    model = create_model(preset).eval()
    enc = find_mergeable(model)[0]
    video = torch.randn_like(enc.example_input(2))
    n = enc.num_tokens
    with torch.no_grad():
        plain = enc(video, enc.new_merge_state())
        for name in MERGING:
            apply_merge(model, MergeSetting(method=name, r=[n // 4, n // 8], method_options={"merge_op": "mlerp"}))
            state = enc.new_merge_state()
            out = enc(video, state)
            assert state.tokens_per_layer[:2] == [n - n // 4, n - n // 4 - n // 8], name
            assert torch.isfinite(out).all(), name
            apply_merge(model, MergeSetting(method=name, r=0, method_options={"merge_op": "mlerp"}))
            assert torch.equal(enc(video, enc.new_merge_state()), plain), name
    unpatch(model)
