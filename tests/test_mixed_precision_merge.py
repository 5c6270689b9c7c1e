"""Merges under mixed precision (issue 26, item 5): the size-weighted average accumulates in float32 whatever the
tokens' dtype, so bf16 tokens get one rounding (at the end) instead of three; float32 stays the official arithmetic
bit for bit."""
from __future__ import annotations

import torch

from vidtldr_pl.merging import bipartite_soft_matching, merge_tokens, merge_wavg


def _inputs(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, 64, generator=g)
    size = torch.randint(1, 6, (4, 256, 1), generator=g).float()
    plan = bipartite_soft_matching(x, 96)
    plan.src_weight = torch.rand(4, 96, 1, generator=g)  # vid-TLDR's saliency weights
    return plan, x.to(dtype), size


def _merge_in_the_tokens_dtype(plan, x, size):
    """The arithmetic before: weights and the division in the tokens' dtype, only the sum in float32."""
    smax = size.amax(dim=-2, keepdim=True)
    x = merge_tokens(plan, x * (size / smax).to(x.dtype), mode="sum")
    merged_size = merge_tokens(plan, size, mode="sum")
    return x / (merged_size / smax).to(x.dtype)


def test_float32_is_unchanged_bit_for_bit():
    plan, x, size = _inputs()
    merged, merged_size = merge_wavg(plan, x, size)
    assert merged.dtype == torch.float32 and merged_size.dtype == torch.float32
    assert torch.equal(merged, _merge_in_the_tokens_dtype(plan, x, size))


def test_bf16_tokens_get_one_rounding():
    plan, x, size = _inputs(torch.bfloat16)
    reference, _ = merge_wavg(plan, x.float(), size)  # the same bf16 inputs, float32 arithmetic
    merged, _ = merge_wavg(plan, x, size)
    before = _merge_in_the_tokens_dtype(plan, x, size)
    assert merged.dtype == torch.bfloat16
    err_after = (merged.float() - reference).abs()
    err_before = (before.float() - reference).abs()
    # one bf16 rounding: at most half a unit in the last place, 2**-8 relative
    assert (err_after <= reference.abs() * 2**-8 + 1e-30).all()
    assert err_after.mean() < 0.5 * err_before.mean()
    assert err_after.max() < err_before.max()
    print(f"bf16 merge error vs float32: mean {err_before.mean():.2e} -> {err_after.mean():.2e}, "
          f"max {err_before.max():.2e} -> {err_after.max():.2e}")


def test_explicit_attention_with_a_size_bias_runs_on_bf16_tokens():
    """After a merge the log-size bias is float32: the explicit kernel's softmax then runs in float32 and its
    weights are cast to the values' dtype (a bf16 model merging with the reference kernel used to fail here)."""
    from vidtldr_pl.ops import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g) for _ in range(3))
    bias = torch.rand(2, 1, 1, 16, generator=g).add(1).log()
    ref, _ = attention(q, k, v, 8**-0.5, bias, "explicit")
    low, _ = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 8**-0.5, bias, "explicit")
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.05)
