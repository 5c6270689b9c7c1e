"""Starting points for the action and ViFi-CLIP demos: the retrieval demo's video encoder in their layouts.

    python tools/init_from_umt_demo.py videomae_demo videomae_demo_init.safetensors
    python tools/init_from_umt_demo.py vificlip_demo vificlip_demo_init.safetensors

VideoMAE and ViFi-CLIP fine-tune pre-trained encoders; the demos do the same on a CPU budget. Their "pre-training" is
the shipped retrieval demo (builtin:umt_demo_synthetic, trained on the synthetic captions that name the objects'
shapes, colours and directions). Both get its six blocks unchanged (the same widths); the rest:

- ``videomae_demo``: the frame-wise patch embedding (kernel 1 x 16 x 16) is inflated to VideoMAE's tubelet of 2
  frames (each half the weight, as I3D inflates 2-D filters, so a still clip embeds as before); UMT's final norm
  becomes ``fc_norm`` (the norm VideoMAE applies after the mean); the classifier head starts from the preset's own
  (seeded) initialisation. Positions: VideoMAE's fixed sin-cos table.
- ``vificlip_demo`` (one frame at a time): the patch embedding as it is, its bias (CLIP's has none) folded into the
  learned positions, which start from UMT's sin-cos positions of the first frame (the CLS position at 0); UMT's
  q / v biases become the packed q|k|v bias with k at 0 (UMT has none); UMT's final norm becomes ``ln_post`` and its
  ``vision_proj`` weight the projection (its bias dropped: CLIP's has none). The CLS token, ``ln_pre`` (identity)
  and the text tower (CLIP's BPE, which UMT does not use) start from the preset's initialisation, and the
  logit scale from CLIP's initial log(1 / 0.07).

The file loads strictly into the preset.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.backbones.layers import sincos_table  # noqa: E402
from vidtldr_pl.backbones.registry import create_model  # noqa: E402


def _blocks(umt: dict[str, Tensor]) -> dict[str, Tensor]:
    """The vision blocks of a UMT state dict (keys ``vision_encoder.encoder.blocks.*``) as ``encoder.blocks.*``."""
    return {k.removeprefix("vision_encoder."): v.clone() for k, v in umt.items()
            if k.startswith("vision_encoder.encoder.blocks.")}


def videomae_from_umt(umt: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``target`` (a videomae state dict: shapes and the head) with the UMT vision encoder mapped in."""
    out = {**target, **_blocks(umt)}
    weight = umt["vision_encoder.encoder.patch_embed.proj.weight"]  # (C, 3, 1, p, p) -> (C, 3, tubelet, p, p)
    tubelet = target["encoder.patch_embed.proj.weight"].shape[2]
    out["encoder.patch_embed.proj.weight"] = weight.repeat(1, 1, tubelet, 1, 1) / tubelet
    out["encoder.patch_embed.proj.bias"] = umt["vision_encoder.encoder.patch_embed.proj.bias"].clone()
    out["fc_norm.weight"] = umt["vision_encoder.encoder.norm.weight"].clone()
    out["fc_norm.bias"] = umt["vision_encoder.encoder.norm.bias"].clone()
    return out


def vificlip_from_umt(umt: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``target`` (a vificlip state dict: shapes, CLS, ln_pre and the text tower) with the UMT vision encoder mapped
    in (see the module docstring)."""
    out = dict(target)
    for name, value in _blocks(umt).items():
        if name.endswith(".attn.q_bias") or name.endswith(".attn.v_bias"):
            continue
        out[name] = value
    for key in [k for k in out if k.endswith(".attn.qkv.bias")]:
        prefix = "vision_encoder." + key.removesuffix("qkv.bias")
        q, v = umt[prefix + "q_bias"], umt[prefix + "v_bias"]
        out[key] = torch.cat([q, torch.zeros_like(q), v])
    out["encoder.patch_embed.proj.weight"] = umt["vision_encoder.encoder.patch_embed.proj.weight"].clone()
    bias = umt["vision_encoder.encoder.patch_embed.proj.bias"]
    pos = target["encoder.pos_embed"].clone()  # (1, 1 + patches, D)
    pos[0, 0] = 0.0
    pos[0, 1:] = sincos_table(pos.shape[1] - 1, pos.shape[2]).to(pos.dtype) + bias
    out["encoder.pos_embed"] = pos
    out["ln_post.weight"] = umt["vision_encoder.encoder.norm.weight"].clone()
    out["ln_post.bias"] = umt["vision_encoder.encoder.norm.bias"].clone()
    out["proj"] = umt["vision_proj.weight"].t().contiguous()
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return out


CONVERTERS = {"videomae_demo": videomae_from_umt, "vificlip_demo": vificlip_from_umt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=sorted(CONVERTERS), help="the demo model to initialise")
    parser.add_argument("out", type=Path, help="the safetensors file to write")
    parser.add_argument("--source", default="builtin:umt_demo_synthetic", help="the UMT demo weights to start from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parts that start from the preset's init")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    umt = create_model("umt_demo", checkpoint=args.source).state_dict()
    torch.manual_seed(args.seed)
    model = create_model(args.preset)
    target = model.state_dict()
    state = CONVERTERS[args.preset](umt, target)
    model.load_state_dict(state, strict=True)  # names any key or shape the mapping got wrong
    save_file({k: v.contiguous() for k, v in state.items()}, str(args.out))
    print(f"wrote {args.out}: {len(state)} tensors of {args.preset}, the vision encoder from {args.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
