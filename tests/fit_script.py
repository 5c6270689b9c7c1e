"""A small fine-tuning run of RetrievalTask on the synthetic benchmark; run as a program, not collected by pytest.

    python tests/fit_script.py OUT_DIR [--max-steps 8 | --max-epochs E] [--kill-at STEP] [--resume CKPT] [--devices N]
                                       [--num-nodes N] [--merge vidtldr]

umt_tiny (4 frames, 64 px), 24 training captions, batch 4 (6 batches per epoch), text dropout on, vid-TLDR merging
during training, a checkpoint after every step (OUT_DIR/ckpt/last.ckpt). Every process appends
{"step", "rank", "loss", "vtc", "vtm"} per training step to OUT_DIR/losses.jsonl. ``--kill-at K`` kills the process
(SIGKILL, no clean-up) when step K is about to start, i.e. after the checkpoint of step K-1 was written.
``--val-each-epoch`` validates after every epoch and checkpoints there instead (OUT_DIR/checkpoints/last.ckpt).
With ``--validate`` the test split is evaluated after fitting and rank 0 writes OUT_DIR/results.json.
Under torchrun (2 nodes), Lightning reads the ranks from the environment.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.data_modules.retrieval import SyntheticRetrievalDataModule  # noqa: E402
from vidtldr_pl.callbacks import TokenMerging  # noqa: E402
from vidtldr_pl.tasks import RetrievalTask  # noqa: E402


class RecordLosses(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        row = {"step": trainer.global_step, "rank": trainer.global_rank, "epoch": trainer.current_epoch,
               "loss": float(outputs["loss"]), "vtc": float(m["train/vtc"]), "vtm": float(m["train/vtm"]),
               "videos": batch["video_index"].tolist()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--max-epochs", type=int, help="train by epochs (as the configs do) instead of --max-steps")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--resume")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--num-nodes", type=int, default=1)
    ap.add_argument("--merge", default="vidtldr")
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--val-each-epoch", action="store_true", help="validate at the end of every training epoch")
    ap.add_argument("--cache", default=None, help="synthetic data cache (default OUT/../synthetic)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(0, workers=True)
    dm = SyntheticRetrievalDataModule(
        cache_dir=args.cache or str(out.parent / "synthetic"), seed=0, num_train=24, num_val=6, num_test=6,
        clip_frames=8, clip_size=64, num_frames=4, img_size=64, batch_size=4, eval_batch_size=3, num_workers=1,
        max_txt_len=24,
    )
    # with --val-each-epoch the task's own checkpoints (best by validation R@1 and last, written after validation)
    task = RetrievalTask("umt_tiny", k_test=3, lr=1e-3, warmup_epochs=0.5, seed=0, save_best=args.val_each_epoch)
    callbacks = [RecordLosses(out / "losses.jsonl")]
    if not args.val_each_epoch:
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=-1,
                                         filename="step{step}"))
    if args.merge != "none":
        callbacks.append(TokenMerging(args.merge, r=[12, 8]))
    if args.kill_at is not None:
        callbacks.append(KillAt(args.kill_at))
    strategy = "ddp" if args.devices * args.num_nodes > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=out, devices=args.devices, num_nodes=args.num_nodes,
                         strategy=strategy,
                         max_steps=-1 if args.max_epochs else args.max_steps,
                         max_epochs=args.max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=1.0 if args.val_each_epoch else 0, num_sanity_val_steps=0,
                         callbacks=callbacks, deterministic=True)
    trainer.fit(task, datamodule=dm, ckpt_path=args.resume)
    if args.validate:
        trainer.limit_test_batches = 1.0
        trainer.test(task, datamodule=dm, verbose=False)
        if trainer.global_rank == 0:
            (out / "results.json").write_text(json.dumps({"world_size": trainer.world_size, **task.results}))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
