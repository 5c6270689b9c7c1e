"""CPU cost of one ITM pair of the retrieval demo's model by intra-op threads and pairs per forward (issue 21.5).

    python benchmarks/itm_threads.py [--threads 1 2] [--batch 16 32 128] [--reps 8]

The shipped demo UMT (``builtin:umt_demo_synthetic``: 2 fusion layers, 192 wide, 24 text tokens) fuses random
captions with random video tokens (288 per video, the demo without merging) through the re-ranking's path: the
cross-attention keys / values of 64 videos computed once, each forward holding ``batch`` pairs of ``batch // 16``
videos (16 texts each, as a video query's top 16), its rows reading their video's keys / values (``memory_index``).
Prints CPU ms (user + sys of this process) and wall ms per pair, and ``os.getloadavg()``: on cores shared with other
work, the CPU cost of several threads per small op grows with the load (the threads wait for one another).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from vidtldr_pl.backbones import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32, 128])
    parser.add_argument("--reps", type=int, default=8, help="forwards timed per setting (after one warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("umt_demo", checkpoint="builtin:umt_demo_synthetic").eval()
    nv, n, length = 64, 288, 24
    tokens = torch.randn(nv, n, model.cfg.vision.embed_dim)
    hidden = torch.randn(nv, length, model.cfg.text.hidden_size)
    mask = (torch.arange(length)[None] < torch.randint(8, length + 1, (nv, 1))).long()
    print(f"load average at start: {os.getloadavg()}")
    print("| threads | pairs / forward | CPU ms / pair | wall ms / pair |\n|---:|---:|---:|---:|")
    with torch.no_grad():
        memory = model.text_encoder.fusion_memory(tokens)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch:
                video = torch.arange(batch) // 16 % nv
                text = torch.arange(batch) % nv
                model.itm_logits(hidden[text], mask[text], None, memory=memory, memory_index=video)
                cpu, wall = time.process_time(), time.perf_counter()
                for rep in range(args.reps):
                    v = (video + rep * (batch // 16)) % nv
                    model.itm_logits(hidden[text], mask[text], None, memory=memory, memory_index=v)
                pairs = args.reps * batch
                print(f"| {threads} | {batch} | {(time.process_time() - cpu) / pairs * 1e3:.2f} | "
                      f"{(time.perf_counter() - wall) / pairs * 1e3:.2f} |")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
