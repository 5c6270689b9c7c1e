"""2-process DDP (gloo, CPU) zero-shot evaluation over 3 splits; run as a program, not collected by pytest.

    python tests/ddp_zero_shot_script.py OUT.json DATA_DIR CHECKPOINT

Rank 0 writes {"world_size", "results", "scores": {split: (N, K)}} to OUT.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from zero_shot_data import SPLITS, datamodule, make_trainer, task  # noqa: E402

from vidtldr_pl.callbacks import TokenMerging  # noqa: E402
from vidtldr_pl.tasks.zero_shot import evaluate_splits  # noqa: E402


def main(out: str, data: str, checkpoint: str) -> None:
    torch.set_num_threads(1)
    root = Path(data)
    t = task(Path(checkpoint))
    scores, trainers = {}, []

    def trainer():
        trainers.append(make_trainer([TokenMerging("vidtldr", r=[4, 2])], devices=2, strategy="ddp"))
        return trainers[-1]

    results = {}
    for split in SPLITS:
        results[split] = evaluate_splits(t, {split: datamodule(root, split)}, trainer)["splits"][split]
        scores[split] = t.scores.tolist()
    if trainers[-1].global_rank == 0:
        Path(out).write_text(json.dumps({"world_size": trainers[-1].world_size, "results": results, "scores": scores}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
