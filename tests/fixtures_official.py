"""Readers for the official golden fixtures (see tests/data/reference/fixtures/README.md for the contract).

Two layouts are read: the originals (as in ``../shared/reference/fixtures``) and the packed copies in the repository
(``tests/data/pack_reference.py`` writes them), which decode to the originals' tensors bit for bit:

- inputs that the README's recipe regenerates bit-exactly (``x_in``, ``attn_l{l}`` of the ``fn_*`` cases) are
  dropped; the tests regenerate them as they always did for case A;
- ``x_out_l{l}`` of the ``fn_*`` cases keeps only the rows that the merge changed (``x_out_l{l}.raw``, (K, C));
  every other row is the same token as row ``i`` of the layer's input x (``x_out_l{l}.rows`` (B, N), -1 for a
  stored row), rebuilt with the official weighted average of a lone token: ``(x_i * (s_i / smax)) / (s'_j / smax)``
  (s: sizes entering the layer, smax their per-sample maximum, s': sizes after it; all ones while sizes are None);
- the header's ``packed`` entry lists the SHA-256 of every original tensor, and :func:`load_case` checks the
  decoded tensors against it, so a packed file can never silently differ from the official one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

PACK_FORMAT = "vidtldr-pl-fixture-rows-1"


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, tensors) of one fixture file, original or packed (decoded and checked against the original's hashes)."""
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
        meta = json.loads(header["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "packed" not in header:
        return meta, tensors
    packed = json.loads(header["packed"])
    if packed.get("format") != PACK_FORMAT:
        raise ValueError(f"{path}: unknown packed fixture format {packed.get('format')!r} (expected {PACK_FORMAT})")
    tensors = unpack(meta, tensors)
    if set(tensors) != set(packed["sha256"]):
        raise ValueError(f"{path}: decoded tensors {sorted(tensors)} differ from the packed list {sorted(packed['sha256'])}")
    for key, digest in packed["sha256"].items():
        if sha256(tensors[key]) != digest:
            raise ValueError(f"{path}: decoded {key} is not bit-identical to the official tensor (SHA-256 differs)")
    return meta, tensors


def sha256(t: torch.Tensor) -> str:
    """SHA-256 of the raw bytes (dtype and values; shapes are checked by the tests)."""
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def sha256_16(t: torch.Tensor) -> str:
    return sha256(t)[:16]


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


def regenerate_x(meta: dict) -> torch.Tensor:
    """x_in (B, T, C) alone: the recipe's first draw (bit-exact on every CPU, unlike the softmaxed attention)."""
    return torch.randn(meta["B"], meta["T"], meta["C"], generator=torch.Generator().manual_seed(meta["seed"]))


def dense_source(tensors: dict, meta: dict, layer: int) -> torch.Tensor:
    key = f"source_l{layer}"
    if key in tensors:
        return tensors[key]
    idx, val = tensors[f"{key}_coo_idx"], tensors[f"{key}_coo_val"]
    out = torch.zeros(meta[f"{key}_shape"], dtype=val.dtype)
    out[idx[:, 0], idx[:, 1], idx[:, 2]] = val
    return out


# ------------------------------------------------------------------------------------------------ packed layout
def lone_tokens(x: torch.Tensor, size: torch.Tensor | None, size_out: torch.Tensor | None,
                rows: torch.Tensor) -> torch.Tensor:
    """Rows of a merge output that hold one input token each: x (B, N, C), size (B, N, 1) or None,
    size_out (B, M, 1) or None, rows (B, M) input index per output row (negative: filled with 0) -> (B, M, C)."""
    s = torch.ones_like(x[..., :1]) if size is None else size
    s_out = torch.ones(*rows.shape, 1, dtype=x.dtype) if size_out is None else size_out
    smax = s.amax(dim=-2, keepdim=True)
    index = rows.clamp_min(0).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    out = torch.gather(x * (s / smax), 1, index) / (s_out / smax)
    return out.masked_fill(rows.unsqueeze(-1) < 0, 0.0)


def _layer_sizes(tensors: dict, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(size entering the layer, size after it); None while the official sizes are still None."""
    before = next((tensors[f"size_l{i}"] for i in range(layer - 1, -1, -1) if f"size_l{i}" in tensors), None)
    return before, tensors.get(f"size_l{layer}", before)


def unpack(meta: dict, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed tensors -> the original tensors (the inputs the recipe regenerates stay absent)."""
    tensors = {k: v for k, v in stored.items() if not k.endswith((".rows", ".raw"))}
    x_prev = stored["x_in"] if "x_in" in stored else regenerate_x(meta)
    for layer in range(len(meta["r"])):
        key = f"x_out_l{layer}"
        if f"{key}.rows" in stored:
            rows, raw = stored[f"{key}.rows"], stored[f"{key}.raw"]
            size, size_out = _layer_sizes(tensors, layer)
            out = lone_tokens(x_prev, size, size_out, rows)
            out[rows < 0] = raw
            tensors[key] = out
        x_prev = tensors[key]
    return tensors


def pack(meta: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Original tensors of a ``fn_*`` case -> (tensors to store, the header's ``packed`` entry).

    Drops the inputs only where this machine regenerates them bit-exactly, and keeps a row of x_out only where
    :func:`lone_tokens` does not rebuild it bit-exactly; the result is decoded and compared before it is returned.
    """
    out = dict(tensors)
    x_gen, attn_gen = regenerate_inputs(meta)
    for key, regen in [("x_in", x_gen), *((f"attn_l{i}", a) for i, a in enumerate(attn_gen))]:
        if key in out and torch.equal(out[key], regen):
            del out[key]
    x_prev = tensors.get("x_in", x_gen)
    for layer in range(len(meta["r"])):
        key = f"x_out_l{layer}"
        gold = tensors[key]
        # candidate input row of every output row: the nearest one (float64, exact distances), then kept only
        # where the lone-token formula reproduces the golden row bit for bit
        rows = torch.cdist(gold.double(), x_prev.double(), compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)
        size, size_out = _layer_sizes(tensors, layer)
        same = (lone_tokens(x_prev, size, size_out, rows) == gold).all(-1)
        rows = torch.where(same, rows, torch.full_like(rows, -1))
        del out[key]
        out[f"{key}.rows"], out[f"{key}.raw"] = rows, gold[rows < 0].contiguous()
        x_prev = gold
    info = {"format": PACK_FORMAT, "sha256": {k: sha256(v) for k, v in tensors.items() if k in out or
                                               k.startswith("x_out_l")}}
    decoded = unpack(meta, out)
    assert set(decoded) == set(info["sha256"]), (sorted(decoded), sorted(info["sha256"]))
    for k, v in decoded.items():
        assert torch.equal(v, tensors[k]) and v.dtype == tensors[k].dtype, f"packing changed {k}"
    return out, info
