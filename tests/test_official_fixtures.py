"""Our merge step and block stack against golden tensors from the official vid-TLDR code (max abs err < 1e-5)."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures_official import dense_source, load_case, regenerate_inputs, sha256_16
from reference_data import IN_REPO, fixture_path
from vidtldr_pl.backbones.layers import Block
from vidtldr_pl.merging import AttentionInfo, LayerMerge, MergeState, VidTLDR, vidtldr_saliency

TOL = 1e-5
# Block stacks with sharp attention (qk_gain 3) are ill-conditioned: one ulp of BLAS rounding in a linear layer
# moves block outputs by ~1e-5, and the official float32 output is itself ~2.5e-5 away from a float64 evaluation.
# On this machine's CPU (MKL on AMD, a different sgemm kernel than the fixture generator's) x lands 1-2e-5 away;
# merge decisions, token order, sizes and sources still match to < 1e-5 and are asserted at TOL.
BLOCK_X_TOL = 4e-5
FN_CASES = ["fn_A_b1_t2352_c768", "fn_B_b2_t196_c64", "fn_C_b2_t197_c64_frac", "fn_D_b3_t100_c32_cap", "fn_E_b2_t64_c16_zero_first"]
BLOCK_CASES = ["block_B_b2_t196_c96_h12", "block_C_b2_t197_c64_h4_frac", "block_D_b3_t100_c32_h4_cap"]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != expected {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


def _inputs(meta, tensors):
    if "x_in" in tensors:  # the original files of cases B-E; the in-repo copies regenerate them, as case A
        return tensors["x_in"], [tensors[f"attn_l{i}"] for i in range(len(meta["r"]))]
    x, attns = regenerate_inputs(meta)
    assert sha256_16(x) == meta["x_in_summary"]["sha256_16"], "regenerated x differs from the official input"
    for i, a in enumerate(attns):
        # softmax rounding depends on the CPU's vector ISA, so the attention is checked to ~1 ulp, not bitwise
        summary = meta["layers"][i]["attn_summary"]
        probes = a.flatten()[summary["probe_flat_idx"]].double()
        assert torch.allclose(probes, torch.tensor(summary["probe_vals"], dtype=torch.float64), rtol=1e-5, atol=1e-9)
        assert abs(a.double().sum().item() - summary["sum"]) < 1e-3
    return x, attns


@pytest.mark.parametrize("case", FN_CASES)
def test_merge_step_matches_official(case):
    meta, tensors = load_case(fixture_path(case))
    x_in, attns = _inputs(meta, tensors)
    method = VidTLDR()
    for trace in (False, True):
        state = MergeState(trace_source=trace)
        x = x_in
        for layer, (r, attn) in enumerate(zip(meta["r"], attns)):
            if not trace:
                assert _max_err(vidtldr_saliency(attn), tensors[f"score_obj_l{layer}"]) < TOL
            x = method(x, state, AttentionInfo(probs=attn), r)
            assert x.shape[1] == meta["layers"][layer]["T_out"]
            if trace and meta["layers"][layer]["size_is_none"]:
                assert state.source is None and state.size is None
                continue
            if trace:
                src = dense_source(tensors, meta, layer)
                assert _max_err(state.source, src) < TOL, f"source after layer {layer}"
                continue
            assert _max_err(x, tensors[f"x_out_l{layer}"]) < TOL, f"x after layer {layer}"
            if meta["layers"][layer]["size_is_none"]:
                assert state.size is None
            else:
                assert _max_err(state.size, tensors[f"size_l{layer}"]) < TOL, f"size after layer {layer}"


@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("mode", ["explicit", "fused", "flex"])
def test_block_stack_matches_official(case, mode):
    meta, tensors = load_case(fixture_path(case))
    blocks = []
    for i, r in enumerate(meta["r"]):
        block = Block(meta["C"], meta["H"], attention=mode)
        weights = {k[len(f"weights.{i}."):]: v for k, v in tensors.items() if k.startswith(f"weights.{i}.")}
        block.load_state_dict(weights, strict=True)
        block.merge = LayerMerge(VidTLDR(), r) if r else None
        blocks.append(block.eval())
    for trace in (False, True):
        state = MergeState(trace_source=trace)
        x = tensors["x_in"]
        with torch.no_grad():
            for layer, block in enumerate(blocks):
                x = block(x, state)
                assert x.shape[1] == meta["layers"][layer]["T_out"]
                assert _max_err(x, tensors[f"x_out_l{layer}"]) < BLOCK_X_TOL, f"x after block {layer}"
                assert _max_err(state.size, tensors[f"size_l{layer}"]) < TOL, f"size after block {layer}"
                if trace:
                    assert _max_err(state.source, tensors[f"source_l{layer}"]) < TOL


def test_packed_fixture_decodes_to_the_official_bits_or_fails(tmp_path):
    """The in-repo fn_* files are packed (tests/fixtures_official.py): inputs regenerated from the seed, unchanged
    rows of x_out rebuilt; decoding checks every tensor against the official file's SHA-256, so a changed bit is
    an error, never a silently different golden value."""
    src = IN_REPO / "fixtures" / "fn_D_b3_t100_c32_cap.safetensors"
    with safe_open(str(src), "pt") as f:
        header, stored = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert "packed" in header and "x_in" not in stored and "attn_l0" not in stored
    assert stored["x_out_l0.raw"].shape[0] < stored["x_out_l0.rows"].numel()  # most rows are rebuilt
    meta, tensors = load_case(src)
    assert tensors["x_out_l0"].shape == (3, 50, 32) and tensors["x_out_l1"].shape == (3, 25, 32)
    raw = stored["x_out_l1.raw"]
    raw[0, 0] = torch.nextafter(raw[0, 0], torch.tensor(float("inf")))  # one ulp
    save_file(stored, str(tmp_path / "tampered.safetensors"), metadata=header)
    with pytest.raises(ValueError, match="decoded x_out_l1 is not bit-identical"):
        load_case(tmp_path / "tampered.safetensors")
