"""Readers for the official golden fixtures in shared/reference/fixtures (see its README for the contract)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def sha256_16(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def regenerate_inputs(meta: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fixture README's input recipe: one CPU generator, x then per layer z and base."""
    g = torch.Generator().manual_seed(meta["seed"])
    b, t, c, h = meta["B"], meta["T"], meta["C"], meta["H"]
    x = torch.randn(b, t, c, generator=g)
    attns = []
    for layer in meta["layers"]:
        n = layer["T_in"]
        z = torch.randn(b, h, n, 1, generator=g)
        base = torch.randn(b, h, n, n, generator=g)
        attns.append(torch.softmax(1.5 * base * torch.clamp(torch.exp(0.5 * z), 0.25, 4.0), dim=-1))
    return x, attns


def dense_source(tensors: dict, meta: dict, layer: int) -> torch.Tensor:
    key = f"source_l{layer}"
    if key in tensors:
        return tensors[key]
    idx, val = tensors[f"{key}_coo_idx"], tensors[f"{key}_coo_val"]
    out = torch.zeros(meta[f"{key}_shape"], dtype=val.dtype)
    out[idx[:, 0], idx[:, 1], idx[:, 2]] = val
    return out
