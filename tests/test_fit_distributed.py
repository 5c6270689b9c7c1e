"""Fine-tuning runs as separate programs (tests/fit_script.py): kill-and-resume equals an uninterrupted run, a
2-process DDP fit, a 2-node torchrun launch on 127.0.0.1, and DDP validation equal to a 1-process evaluation."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from vidtldr_pl.data_modules.retrieval import SyntheticRetrievalDataModule
from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.tasks import RetrievalTask

SCRIPT = Path(__file__).resolve().parent / "fit_script.py"
pytestmark = pytest.mark.slow


def _fit(out: Path, *args: str, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), "--cache", str(cache), *args], cwd=out.parent,
                          capture_output=True, text=True, timeout=timeout)


def _losses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RESUME_CASES = {
    # name: (length and validation options, kill before this step, checkpoint written last); 6 batches per epoch
    "mid-epoch": (["--max-steps", "8"], 4, "ckpt/last.ckpt"),
    "mid-epoch, by epochs": (["--max-epochs", "2"], 10, "ckpt/last.ckpt"),
    "after the epoch's last batch": (["--max-steps", "9"], 6, "ckpt/last.ckpt"),
    "after validation, by epochs": (["--max-epochs", "2", "--val-each-epoch"], 7, "checkpoints/last.ckpt"),
    "after validation, max_steps": (["--max-steps", "9", "--val-each-epoch"], 7, "checkpoints/last.ckpt"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_kill_and_resume_continues_exactly(tmp_path, case):
    """SIGKILL, resume from the newest checkpoint: every step after it trains on the same samples with the same loss
    as an uninterrupted run, wherever the checkpoint was written (Lightning counts a checkpoint taken after an
    epoch's last batch or its validation as inside that epoch; the data position must not)."""
    options, kill_at, ckpt = RESUME_CASES[case]
    cache = tmp_path / "synthetic"
    full = _fit(tmp_path / "full", *options, cache=cache)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _fit(tmp_path / "run", *options, "--kill-at", str(kill_at), cache=cache)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [r["step"] for r in _losses(tmp_path / "run")][-1] == kill_at
    resumed = _fit(tmp_path / "run", *options, "--resume", str(tmp_path / "run" / ckpt), cache=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    want = _losses(tmp_path / "full")
    got = {r["step"]: r for r in _losses(tmp_path / "run")}  # a step redone after the kill: its second record
    assert sorted(got) == [r["step"] for r in want] == list(range(1, len(want) + 1))
    for a in want:  # same step, same samples, same losses (CPU, same kernels: bit-equal)
        b = got[a["step"]]
        assert (a["epoch"], a["videos"]) == (b["epoch"], b["videos"]), a["step"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["vtm"] == pytest.approx(b["vtm"], abs=1e-6)
    assert [r["videos"] for r in want[6:8]] != [r["videos"] for r in want[0:2]]  # the second epoch reshuffles


def test_ddp_two_processes_and_two_nodes(tmp_path):
    cache = tmp_path / "synthetic"
    ddp = _fit(tmp_path / "ddp", "--max-steps", "3", "--devices", "2", "--validate", cache=cache)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    rows = _losses(tmp_path / "ddp")
    assert sorted((r["step"], r["rank"]) for r in rows) == [(s, k) for s in (1, 2, 3) for k in (0, 1)]
    seen = [v for r in rows for v in r["videos"]]
    assert sorted(seen) == list(range(24))  # 3 steps x 2 processes x 4 = the whole epoch, every clip once
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(set(r["videos"]))
    assert all(not (a & b) for a, b in by_step.values())  # the two processes train on different samples

    # validation in DDP equals a 1-process evaluation of the same weights
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2
    task = RetrievalTask("umt_tiny", k_test=3)
    state = torch.load(tmp_path / "ddp" / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    task.load_state_dict(state)
    dm = SyntheticRetrievalDataModule(cache_dir=str(cache), seed=0, num_train=24, num_val=6, num_test=6,
                                      clip_frames=8, clip_size=64, num_frames=4, img_size=64, eval_batch_size=3,
                                      num_workers=0, max_txt_len=24)
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[TokenMerging("vidtldr", r=[12, 8])]).test(task, datamodule=dm, verbose=False)
    keys = [k for k in task.results if k.startswith(("itm/", "itc/"))]
    assert {k: results[k] for k in keys} == {k: task.results[k] for k in keys}

    # two "nodes" of one process each, launched with torchrun on 127.0.0.1
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
         "--master-addr=127.0.0.1", f"--master-port={port}", str(SCRIPT), str(tmp_path / "nodes"),
         "--cache", str(cache), "--max-steps", "3", "--num-nodes", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[1][-2000:] for o in outs)
    nodes = _losses(tmp_path / "nodes")
    # the same global batch split the same way: equal to the 2-process run (reduction order may differ)
    key = lambda r: (r["step"], r["rank"])  # noqa: E731
    for a, b in zip(sorted(rows, key=key), sorted(nodes, key=key)):
        assert (a["step"], a["rank"], a["videos"]) == (b["step"], b["rank"], b["videos"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_training_checkpoints_best_last_and_periodic(tmp_path):
    dm = SyntheticRetrievalDataModule(cache_dir=str(tmp_path / "synthetic"), seed=0, num_train=16, num_val=6,
                                      num_test=0, clip_frames=8, clip_size=64, num_frames=4, img_size=64,
                                      batch_size=4, eval_batch_size=3, num_workers=0, max_txt_len=24)
    task = RetrievalTask("umt_tiny", k_test=3, lr=1e-3, save_every_n_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in names
    best = [n for n in names if n.startswith("best-epoch")]
    assert len(best) == 1 and "t2v_r1_" in best[0]
    assert sorted(n for n in names if n.startswith("step")) == ["step6.ckpt", "step8.ckpt"]  # the latest two of 2, 4, 6, 8
