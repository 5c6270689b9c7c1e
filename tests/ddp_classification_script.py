"""2-process DDP (gloo, CPU) multi-view classification test; run as a program, not collected by pytest.

    python tests/ddp_classification_script.py OUT.json DATA_DIR CHECKPOINT [--merge]

DATA_DIR holds videos/ and test.txt (tests/classification_data.py writes them); 7 videos x 15 views = 105 items,
batch size 4, 2 processes: DistributedSampler pads rank 1 with a repeated item. Rank 0 writes {"world_size",
"seen_per_rank", "results", "scores"} to OUT.json. Lightning re-launches this script for rank 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from classification_data import make_datamodule, make_task, make_trainer  # noqa: E402

from vidtldr_pl.callbacks import TokenMerging  # noqa: E402


def main(out: str, data: str, checkpoint: str, merge: bool) -> None:
    torch.set_num_threads(1)
    root = Path(data)
    task, dm = make_task(Path(checkpoint)), make_datamodule(root / "videos", root / "test.txt")
    seen: list[int] = []
    original = task._eval_step

    def counting_step(batch):
        seen.append(int(batch["video_index"].numel()))
        original(batch)

    task._eval_step = counting_step
    callbacks = [TokenMerging("vidtldr", r=[8, 4])] if merge else []
    trainer = make_trainer(callbacks, devices=2, strategy="ddp")
    trainer.test(task, datamodule=dm, verbose=False)
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(2)]
    dist.all_gather(counts, torch.tensor([sum(seen)]))
    if trainer.global_rank == 0:
        Path(out).write_text(json.dumps({
            "world_size": trainer.world_size, "seen_per_rank": [int(c) for c in counts],
            "results": task.results, "scores": task.scores.tolist(),
        }))
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left alive can abort the interpreter at exit


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--merge" in sys.argv[4:])
