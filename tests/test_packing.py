"""Packing (MergeState.batching = "pack"): the rows concatenated into one, block-diagonal attention; the same
outputs as padding."""
from __future__ import annotations

import pytest
import torch

import importlib

from vidtldr_pl.ops.attention import PackedBias, attention

attention_ops = importlib.import_module("vidtldr_pl.ops.attention")

from test_padding import encoder_of, padded_batch, run_blocks


def _run(encoder, tokens, counts, batching):
    state = encoder.new_merge_state()
    state.count = torch.tensor(counts)
    state.batching = batching
    out = run_blocks(encoder, padded_batch(tokens, counts), state)
    return out, state


@pytest.mark.parametrize("method", ["tome", "vidtldr", "saliency_drop", "tome_grouped"])
@pytest.mark.parametrize("attention_mode", ["explicit", "fused"])
@pytest.mark.parametrize("proportional", [True, False])
@pytest.mark.parametrize("model_name", ["umt_tiny", "vificlip_tiny"])
def test_packed_equals_padded(method, attention_mode, proportional, model_name):
    framewise = model_name.startswith("vificlip")
    encoder = encoder_of(model_name, method, [3, 2, 0.1] if framewise else [9, 5, 0.1], attention_mode,
                         proportional)
    torch.manual_seed(1)
    shape = list(encoder.example_input(3).shape)
    shape[2] = 1 if framewise else shape[2]
    with torch.no_grad():
        tokens = encoder.embed(torch.randn(shape))
        n = tokens.shape[1]
        counts = [n - 5, n, n - 2] if framewise else [n - 11, n, n - 4]
        padded, pad_state = _run(encoder, tokens, counts, "pad")
        packed, pack_state = _run(encoder, tokens, counts, "pack")
    assert torch.equal(pad_state.count, pack_state.count) and not pack_state.packed
    real = pad_state.real_mask(padded.shape[1])
    torch.testing.assert_close(packed[real], padded[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pack_state.size, pad_state.size, atol=1e-5, rtol=1e-5)
    assert torch.equal(pack_state.row_counts(), pad_state.row_counts())


@pytest.mark.parametrize("kernel", ["nested", "loop", "mask"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_kernels_agree(kernel, with_bias, monkeypatch):
    """Nested (jagged) sdpa, one sdpa per row and the dense block mask give each row its own attention."""
    monkeypatch.setattr(attention_ops, "PACKED_FUSED", kernel)
    torch.manual_seed(0)
    lengths = torch.tensor([5, 9, 3])
    q, k, v = (torch.randn(1, 2, 17, 8) for _ in range(3))
    key_bias = torch.randn(1, 1, 1, 17).abs().log() if with_bias else None
    out, _ = attention(q, k, v, 0.3, PackedBias(lengths, key_bias), "fused")
    start = 0
    for n in lengths.tolist():
        kb = key_bias[..., start:start + n] if with_bias else None
        ref, _ = attention(q[:, :, start:start + n], k[:, :, start:start + n], v[:, :, start:start + n], 0.3, kb,
                           "explicit")
        torch.testing.assert_close(out[:, :, start:start + n], ref, atol=1e-5, rtol=1e-5)
        start += n


def test_packed_flex_matches():
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    lengths = torch.tensor([4, 6])
    q, k, v = (torch.randn(1, 2, 10, 8) for _ in range(3))
    key_bias = torch.rand(1, 1, 1, 10).add(0.5).log()
    out, _ = attention(q, k, v, 0.3, PackedBias(lengths, key_bias), "flex")
    ref, _ = attention(q, k, v, 0.3, PackedBias(lengths, key_bias), "explicit")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_pack_refuses_source_tracing():
    from vidtldr_pl.merging import MergeState

    state = MergeState(trace_source=True, batching="pack")
    with pytest.raises(ValueError, match="pack"):
        state.enter(torch.zeros(2, 4, 3))
