"""Print GFLOPs and tokens per layer of a registered model's vision encoder with no merging, ToMe and vid-TLDR
(or any registered methods: ``--methods none,tome,vidtldr,vidtldr_repshift,random_drop,repshift_drop``).

    python -m vidtldr_pl.flops.report --model umt_b16 --frames 12 --r 600,200,100
    python -m vidtldr_pl.flops.report --model videomae_b16 --frames 16 --r 400,200,100
"""
from __future__ import annotations

import argparse
import json

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports happen in the functions, so that --help answers at once
    import torch

    from .counter import FlopReport


def compact_tokens(counts: list[int]) -> str:
    """[1752, 1552, 1452, 1452, 1452] -> "1752 1552 1452x3"."""
    parts: list[list[int]] = []
    for c in counts:
        if parts and parts[-1][0] == c:
            parts[-1][1] += 1
        else:
            parts.append([c, 1])
    return " ".join(f"{c}x{n}" if n > 1 else str(c) for c, n in parts)


def flops_table(model_name: str, frames: int, r: str, methods: list[str], attention: str, device: str) -> dict[str, FlopReport]:
    """{method: FlopReport} per video of ``model_name``'s (first) mergeable encoder at ``frames`` frames.
    device "meta" counts shapes only; other devices run the model once per method."""
    import torch

    from ..backbones import create_model
    from ..merging import MergeSetting, apply_merge, find_mergeable
    from .counter import encoder_flops

    with torch.device(device):
        model = create_model(model_name, num_frames=frames, attention=attention)
    encoder = find_mergeable(model)[0]
    results = {}
    for method in methods:
        apply_merge(model, MergeSetting(method=method, r=r if method != "none" else None))
        if device == "meta":
            results[method] = encoder_flops(encoder)
        else:
            results[method] = _run_flops(encoder)
    return results


def _run_flops(encoder: torch.nn.Module) -> FlopReport:
    from .counter import count_flops

    video = encoder.example_input(1, device=next(encoder.parameters()).device)
    state = encoder.new_merge_state()
    report, _ = count_flops(lambda: encoder(video, state))
    report.tokens_per_layer = list(state.tokens_per_layer)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="umt_b16", help="a registered model (umt_b16, umt_l16, videomae_b16, vificlip_b16, ...; "
                        "all: vidtldr_pl.backbones.list_models())")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--r", default="600,200,100", help="per-layer r list (MSRVTT schedule by default)")
    parser.add_argument("--methods", default="none,tome,vidtldr")
    parser.add_argument("--attention", default="explicit", choices=["explicit", "fused", "flex"],
                        help="explicit: saliency reuses the attention map (official); fused: adds the exact saliency pass")
    parser.add_argument("--device", default="meta", help="meta counts shapes only; cpu/cuda run the model")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from ..backbones import list_models

    if args.model not in list_models():
        parser.error(f"--model {args.model!r} is not a registered model; choose one of {', '.join(list_models())}")

    results = flops_table(args.model, args.frames, args.r, args.methods.split(","), args.attention, args.device)
    base = results.get("none")
    table = Table(title=f"{args.model}, {args.frames} frames, r = [{args.r}], attention {args.attention}")
    for col in ("method", "encoder GMACs (paper)", "merge GMACs", "total GFLOPs (torch)", "vs none", "tokens per layer"):
        table.add_column(col, justify="left" if col in ("method", "tokens per layer") else "right",
                         no_wrap=col == "method", min_width=max(len(m) for m in results) if col == "method" else None)
    for name, rep in results.items():
        ratio = f"{base.flops / rep.flops:.2f}x" if base else "-"
        table.add_row(name, f"{rep.encoder_gmacs:.1f}", f"{rep.merge_gmacs:.2f}", f"{rep.gflops:.1f}", ratio,
                      compact_tokens(rep.tokens_per_layer))
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {"encoder_gmacs": v.encoder_gmacs, "merge_gmacs": v.merge_gmacs, "gflops": v.gflops,
                           "tokens_per_layer": v.tokens_per_layer} for k, v in results.items()}, f, indent=2)


if __name__ == "__main__":
    main()
