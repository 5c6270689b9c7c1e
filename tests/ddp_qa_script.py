"""2-process DDP (gloo, CPU) QA evaluation; run as a program, not collected by pytest.

    python tests/ddp_qa_script.py OUT.json

11 questions, batch size 2, 2 processes (the sampler repeats one question on rank 1). Rank 0 writes
{"world_size", "results", "predictions"} to OUT.json. Lightning re-launches this script for rank 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from qa_data import TinyQAData, make_task, make_trainer  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    task, dm = make_task(), TinyQAData(num_questions=11, batch_size=2)
    trainer = make_trainer(devices=2, strategy="ddp")
    trainer.validate(task, datamodule=dm, verbose=False)
    if trainer.global_rank == 0:
        Path(out).write_text(json.dumps({"world_size": trainer.world_size, "results": task.results,
                                         "predictions": task.predictions}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
