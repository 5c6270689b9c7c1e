"""2-process DDP (gloo, CPU) retrieval evaluation; run as a program, not collected by pytest.

    python tests/ddp_retrieval_script.py OUT.json

11 videos, batch size 2, 2 processes: DistributedSampler pads rank 1 with a repeated video. Rank 0 writes
{"world_size", "seen_per_rank", "results", "scores"} to OUT.json. Lightning re-launches this script for rank 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from retrieval_bruteforce import TinyRetrievalData, make_task, make_trainer  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    task, dm = make_task(k_test=5), TinyRetrievalData(num_videos=11, batch_size=2)
    seen: list[int] = []
    orig_step = task._eval_step

    def counting_step(batch):
        seen.append(int(batch["video_index"].numel()))
        orig_step(batch)

    task._eval_step = counting_step
    trainer = make_trainer(devices=2, strategy="ddp")
    trainer.validate(task, datamodule=dm, verbose=False)
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(2)]
    dist.all_gather(counts, torch.tensor([sum(seen)]))
    if trainer.global_rank == 0:
        data = {
            "world_size": trainer.world_size,
            "seen_per_rank": [int(c) for c in counts],
            "results": task.results,
            "scores": {k: v.tolist() for k, v in task.scores.items()},
        }
        Path(out).write_text(json.dumps(data))
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left alive can abort the interpreter at exit


if __name__ == "__main__":
    main(sys.argv[1])
