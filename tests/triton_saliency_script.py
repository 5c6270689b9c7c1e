"""Run with TRITON_INTERPRET=1 (set before Triton is imported): the Triton saliency kernels in Triton's CPU
interpreter against the chunked PyTorch path and the explicit reference; prints one JSON line.

Used by tests/test_saliency_triton.py; on a GPU, run it without TRITON_INTERPRET and with --device cuda to check
the compiled kernels the same way.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import (
    AttentionInfo,
    negative_entropy_from_probs,
    negative_entropy_from_qk,
    patch,
)
from vidtldr_pl.merging.saliency import vidtldr_saliency

BLOCK_CASES = ["block_B_b2_t196_c96_h12", "block_C_b2_t197_c64_h4_frac", "block_D_b3_t100_c32_h4_cap"]
CASES = [  # (B, H, N, M, d, dtype, contiguous k)
    (2, 3, 70, 70, 16, torch.float32, True),
    (1, 2, 33, 50, 24, torch.float32, False),
    (2, 4, 130, 130, 64, torch.float32, False),
    (2, 4, 130, 130, 64, torch.bfloat16, True),
    (1, 3, 97, 97, 32, torch.float16, True),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fixtures", type=Path, default=None, help="tests/data/reference/fixtures: run the block stacks")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    result: dict = {"cases": []}
    for b, h, n, m, d, dtype, contiguous in CASES:
        q = (torch.randn(b, h, n, d, generator=g) * 0.4).to(device, dtype)
        k = torch.randn(b, m, h, d, generator=g).to(device, dtype).transpose(1, 2)
        k = k.contiguous() if contiguous else k
        tri = negative_entropy_from_qk(q, k, backend="triton")
        ref = negative_entropy_from_qk(q, k, chunk_size=17, backend="chunked")
        sharp_tri = vidtldr_saliency(AttentionInfo(q=q, k=k), backend="triton")
        sharp_ref = vidtldr_saliency(AttentionInfo(q=q, k=k), backend="chunked")
        result["cases"].append({
            "shape": [b, h, n, m, d], "dtype": str(dtype), "contiguous_k": contiguous,
            "out_shape": list(tri.shape), "out_dtype": str(tri.dtype),
            "raw_rel_err": rel_err(tri, ref), "sharpened_abs_err": (sharp_tri - sharp_ref).abs().max().item(),
            "same_background": bool(torch.equal(sharp_tri == 0, sharp_ref == 0)),
        })

    # Probabilities that underflow to exactly 0: the explicit (official) p log p gives NaN, both q/k paths 0 log 0 = 0.
    q = torch.randn(1, 2, 40, 16, generator=g).to(device) * 30.0
    k = torch.randn(1, 2, 40, 16, generator=g).to(device)
    probs = (q.float() @ k.float().transpose(-1, -2)).softmax(-1)
    tri, ref = negative_entropy_from_qk(q, k, backend="triton"), negative_entropy_from_qk(q, k, backend="chunked")
    result["underflow"] = {
        "zero_probs": int((probs == 0).sum()), "explicit_nan": bool(negative_entropy_from_probs(probs).isnan().any()),
        "triton_finite": bool(tri.isfinite().all()), "rel_err": rel_err(tri, ref),
    }

    # A patched UMT vision encoder: fused attention + Triton saliency against the explicit official path.
    enc = create_model("umt_tiny").vision_encoder.eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5 * (2.0 if "qkv" in name else 1.0))
    enc = enc.to(device)
    video = torch.randn(2, 3, 4, 64, 64, generator=g).to(device)
    with torch.no_grad():
        patch(enc, "vidtldr", r=[20, 10, 0.25], trace_source=True, saliency_backend="triton")
        enc.encoder.set_attention("fused")
        out, _, s_out = enc(video, return_state=True)
        patch(enc, "vidtldr", r=[20, 10, 0.25], trace_source=True)
        enc.encoder.set_attention("explicit")
        ref, _, s_ref = enc(video, return_state=True)
    result["encoder"] = {
        "tokens": s_out.tokens_per_layer, "tokens_ref": s_ref.tokens_per_layer,
        "out_abs_err": (out - ref).abs().max().item(), "size_abs_err": (s_out.size - s_ref.size).abs().max().item(),
        "same_sources": bool(torch.equal(s_out.source > 0, s_ref.source > 0)),
    }
    if args.fixtures is not None:
        result["fixtures"] = official_block_stacks(args.fixtures, device)
    print(json.dumps(result))


def official_block_stacks(fixtures: Path, device: torch.device, backend: str = "triton") -> dict:
    """The official block-stack fixtures run with fused attention and the Triton saliency: max errors against
    the golden x, sizes and sources after every block (tests/test_official_fixtures.py does the same on the
    chunked and explicit paths)."""
    from fixtures_official import load_case

    from vidtldr_pl.backbones.layers import Block
    from vidtldr_pl.merging import LayerMerge, MergeState, VidTLDR

    out = {}
    for case in BLOCK_CASES:
        meta, tensors = load_case(fixtures / f"{case}.safetensors")
        blocks = []
        for i, r in enumerate(meta["r"]):
            block = Block(meta["C"], meta["H"], attention="fused")
            block.load_state_dict({k[len(f"weights.{i}."):]: v for k, v in tensors.items()
                                   if k.startswith(f"weights.{i}.")}, strict=True)
            block.merge = LayerMerge(VidTLDR(saliency_backend=backend), r) if r else None
            blocks.append(block.to(device).eval())
        state, x = MergeState(trace_source=True), tensors["x_in"].to(device)
        errs = {"x": 0.0, "size": 0.0, "source": 0.0, "tokens_ok": True}
        with torch.no_grad():
            for layer, block in enumerate(blocks):
                x = block(x, state)
                errs["tokens_ok"] &= x.shape[1] == meta["layers"][layer]["T_out"]
                for key, ours in (("x", x), ("size", state.size), ("source", state.source)):
                    gold = tensors[f"{'x_out' if key == 'x' else key}_l{layer}"]
                    err = (ours.cpu().double() - gold.double()).abs().max().item() if ours.shape == gold.shape else 1e9
                    errs[key] = max(errs[key], err)
        out[case] = errs
    return out


if __name__ == "__main__":
    main()
