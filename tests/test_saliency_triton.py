"""The Triton saliency kernels, run in Triton's CPU interpreter (TRITON_INTERPRET=1, so in a child process: the
interpreter is chosen when the kernels are defined): equal to the chunked PyTorch path and, inside a patched
encoder, to the explicit official path, and on the official block-stack fixtures. A GPU run of the same script
(``python tests/triton_saliency_script.py --device cuda --fixtures tests/data/reference/fixtures``) checks the
compiled kernels."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidtldr_pl.merging import AttentionInfo, VidTLDR, negative_entropy_from_qk

SCRIPT = Path(__file__).with_name("triton_saliency_script.py")


@pytest.fixture(scope="module")
def interpreted(reference_dir) -> dict:
    pytest.importorskip("triton", reason="the Triton kernels need the triton package (a dependency of CUDA torch)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, str(SCRIPT), "--fixtures", str(reference_dir / "fixtures")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # the module fixture runs the kernels in Triton's interpreter (a child process, ~10 s)
def test_triton_saliency_equals_chunked_path(interpreted):
    assert len(interpreted["cases"]) == 5
    for case in interpreted["cases"]:
        b, _, n, _, _ = case["shape"]
        assert case["out_shape"] == [b, n, 1] and case["out_dtype"] == "torch.float32", case
        assert case["raw_rel_err"] <= 1e-5, case
        assert case["sharpened_abs_err"] <= 1e-5 and case["same_background"], case


@pytest.mark.slow
def test_triton_saliency_is_finite_where_probabilities_underflow(interpreted):
    under = interpreted["underflow"]
    assert under["zero_probs"] > 0 and under["explicit_nan"]  # the official p log p
    assert under["triton_finite"] and under["rel_err"] <= 1e-4


@pytest.mark.slow
def test_encoder_with_triton_saliency_equals_explicit_reference(interpreted):
    enc = interpreted["encoder"]
    assert enc["tokens"] == enc["tokens_ref"] == [44, 34, 26, 26]
    assert enc["same_sources"] and enc["out_abs_err"] < 1e-4 and enc["size_abs_err"] < 1e-5


@pytest.mark.slow
def test_official_block_stacks_through_the_triton_saliency(interpreted):
    """The tolerances of tests/test_official_fixtures.py (x: 4e-5, see BLOCK_X_TOL there; sizes, sources: 1e-5)."""
    assert set(interpreted["fixtures"]) == {"block_B_b2_t196_c96_h12", "block_C_b2_t197_c64_h4_frac",
                                            "block_D_b3_t100_c32_h4_cap"}
    for case, err in interpreted["fixtures"].items():
        assert err["tokens_ok"], case
        assert err["x"] < 4e-5 and err["size"] < 1e-5 and err["source"] < 1e-5, (case, err)


def test_chunked_path_takes_zero_log_zero_as_zero():
    q = torch.randn(1, 2, 30, 8, generator=torch.Generator().manual_seed(1)) * 40.0
    k = torch.randn(1, 2, 30, 8, generator=torch.Generator().manual_seed(2))
    raw = negative_entropy_from_qk(q, k, chunk_size=7, backend="chunked")
    assert raw.isfinite().all() and (raw <= 0).all()


def test_backend_choice_is_validated_and_cpu_triton_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown saliency_backend 'cuda'"):
        VidTLDR(saliency_backend="cuda")
    with pytest.raises(ValueError, match="chunk_size"):
        VidTLDR(chunk_size=0)
    q = k = torch.randn(1, 2, 8, 4)
    assert torch.equal(negative_entropy_from_qk(q, k, backend="auto"), negative_entropy_from_qk(q, k, backend="chunked"))
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        pytest.importorskip("triton")
        with pytest.raises(ValueError, match="runs on CUDA tensors"):
            VidTLDR(saliency_backend="triton").plan(torch.randn(1, 8, 4), AttentionInfo(q=q, k=k), r=2)
