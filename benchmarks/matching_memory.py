"""Peak memory of bipartite matching with the similarity matrix whole vs reduced in row chunks (issue 26, item 4).

Each measurement runs in a fresh process and reports the rise of the peak resident set (``ru_maxrss``) over the
step, after the inputs (and the model) exist and a small warm-up call has run:

- ``matching``: one ``bipartite_soft_matching`` call on UMT-L-shaped keys (B x N x C, float32);
- ``encoder``: a no-grad forward of the UMT-L vision encoder with vid-TLDR (the paper's schedule shape), float32.

    python benchmarks/matching_memory.py                       # both, batch 8, 12 frames (N = 2352), C = 1024
    python benchmarks/matching_memory.py --what matching --batch 8

Prints a table (MiB) and, with --json, writes the rows. CPU only (RSS); the GPU suite reports
torch.cuda.max_memory_allocated for the same rows.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHUNKED = "chunked (default)"
WHOLE = "whole matrix"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(what: str, whole: bool, batch: int, frames: int, dim: int, r: list[int]) -> dict:
    """In this process: the peak RSS rise of one step (MiB) and its wall time."""
    import torch

    from vidtldr_pl.merging import matching

    torch.manual_seed(0)
    if whole:
        matching.MAX_SCORES = None  # every matching step holds its similarity matrix whole
    tokens = frames * 196
    if what == "matching":
        metric = torch.randn(batch, tokens, dim)
        matching.bipartite_soft_matching(torch.randn(1, 64, dim), 8)  # warm-up: kernels, allocator
        before = _peak_mib()
        start = time.perf_counter()
        plan = matching.bipartite_soft_matching(metric, r[0])
        seconds = time.perf_counter() - start
        assert plan.src_idx.shape == (batch, r[0], 1)
    else:
        from vidtldr_pl.backbones import create_model
        from vidtldr_pl.merging import MergeSetting, apply_merge

        encoder = create_model("umt_l16", num_frames=frames).vision_encoder.eval()
        apply_merge(encoder, MergeSetting(method="vidtldr", r=r))
        video = torch.randn(batch, 3, frames, 224, 224)
        with torch.no_grad():
            encoder(video[:1, :, :1].expand(1, 3, frames, 224, 224).contiguous())  # warm-up at batch 1
            before = _peak_mib()
            start = time.perf_counter()
            encoder(video)
            seconds = time.perf_counter() - start
    return {"what": what, "matching": WHOLE if whole else CHUNKED, "batch": batch, "frames": frames, "tokens": tokens,
            "dim": dim, "r": r, "peak_rise_mib": round(_peak_mib() - before, 1), "seconds": round(seconds, 2),
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", nargs="+", default=["matching", "encoder"], choices=["matching", "encoder"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--dim", type=int, default=1024, help="key width of the matching-only rows (UMT-L: 1024)")
    parser.add_argument("--r", default="600,200,100", help="per-block r of the first blocks (vid-TLDR's schedule shape)")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    r = [int(v) for v in args.r.split(",")]
    if args.child:  # one measurement, in this fresh process
        what, whole = args.child.split(":")
        print(json.dumps(measure(what, whole == "whole", args.batch, args.frames, args.dim, r)))
        return 0
    rows = []
    for what in args.what:
        for whole in (True, False):
            cmd = [sys.executable, __file__, "--child", f"{what}:{'whole' if whole else 'chunked'}", "--batch",
                   str(args.batch), "--frames", str(args.frames), "--dim", str(args.dim), "--r", args.r]
            print(f"running {what} ({WHOLE if whole else CHUNKED}) ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| step | matching | batch x tokens | peak RSS rise (MiB) | seconds |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['what']} | {row['matching']} | {row['batch']} x {row['tokens']} | {row['peak_rise_mib']} | "
              f"{row['seconds']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
