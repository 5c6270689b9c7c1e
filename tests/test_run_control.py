"""Runs end honestly, through ``evaluate.py`` / ``train.py`` in a subprocess as a user or a scheduler runs them:
SIGTERM / SIGINT stop the run with one line and exit 143 / 130 (finished ``compare`` rows kept; a training saves a
resumable checkpoint that ``--ckpt_path`` resumes exactly); two concurrent runs of one config write two separate
version folders; a bad r of any ``compare`` row is refused before any video is decoded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "VIDTLDR_PROGRESS_INTERVAL": "0.2", "PYTHONUNBUFFERED": "1"}


def demo_eval_args(tmp: Path, num_test: int = 16, cache: Path | None = None) -> list[str]:
    return [sys.executable, str(ROOT / "evaluate.py"), "--config", "demo_umt.yaml",
            f"--data.init_args.num_test={num_test}", "--data.init_args.eval_batch_size=4",
            "--data.init_args.num_workers=0", f"--data.init_args.cache_dir={cache or tmp / 'cache'}",
            f"--trainer.logger.init_args.save_dir={tmp / 'out'}", f"--trainer.default_root_dir={tmp / 'out'}"]


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, done, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the point the test waits for"
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_sigterm_keeps_finished_rows_and_sigint_stops_at_once(tmp_path):
    proc = start(demo_eval_args(tmp_path), tmp_path, tmp_path / "log.txt")
    results = tmp_path / "out" / "lightning_logs" / "version_0" / "results.json"
    wait_for(proc, results.is_file)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert time.monotonic() - t0 < 30
    log = (tmp_path / "log.txt").read_text()
    (line,) = error_lines(log)
    rows = json.loads(results.read_text())["runs"]
    assert line.startswith("error: stopped by SIGTERM during evaluation ")
    assert f": {len(rows)} of 3 evaluation(s) finished, written to {results}" in line
    assert len(rows) in (1, 2) and rows[0]["name"] == "no merging"

    # SIGINT during the first row: nothing finished, nothing written, exit 130
    second = tmp_path / "second"
    second.mkdir()
    proc = start(demo_eval_args(second, cache=tmp_path / "cache"), second, second / "log.txt")
    wait_for(proc, lambda: "Testing" in (second / "log.txt").read_text())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    (line,) = error_lines((second / "log.txt").read_text())
    assert line.startswith("error: stopped by SIGINT before the first of 3 evaluation(s) finished")
    assert not list((second / "out").rglob("results.json"))


@pytest.mark.slow
def test_two_concurrent_runs_write_two_folders(tmp_path):
    args = [*demo_eval_args(tmp_path, num_test=8), "--merge.method=none"]
    procs = [start(args, tmp_path, tmp_path / f"log{i}.txt") for i in range(2)]
    assert [p.wait(timeout=900) for p in procs] == [0, 0], [(tmp_path / f"log{i}.txt").read_text()[-2000:]
                                                           for i in range(2)]
    versions = sorted((tmp_path / "out" / "lightning_logs").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1"]
    for version in versions:
        assert len(json.loads((version / "results.json").read_text())["runs"]) == 1
    written = sorted(line.split("results written to ", 1)[1].strip() for i in range(2)
                     for line in (tmp_path / f"log{i}.txt").read_text().splitlines() if "results written to" in line)
    assert written == [str(v / "results.json") for v in versions]


@pytest.mark.slow
def test_bad_r_in_a_later_row_refused_before_decoding(tmp_path):
    compare = '[{name: plain, method: none}, {name: bad, method: tome, r: [1, 1, 1, 1, 1, 1, 1, 1]}]'
    proc = subprocess.run([*demo_eval_args(tmp_path), f"--compare={compare}"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == ["error: compare row 2 (bad): r has 8 entries but the model has only 6 blocks: "
                                        "[1, 1, 1, 1, 1, 1, 1, 1]"]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # nothing decoded or written


def train_args(out: Path, cache: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", "demo_umt.yaml",
            "--data.init_args.num_train=32", "--data.init_args.num_val=4", "--data.init_args.num_test=4",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", f"--data.init_args.cache_dir={cache}",
            "--trainer.max_steps=5", "--trainer.limit_val_batches=0", "--model.init_args.save_best=false",
            "--model.init_args.save_every_n_steps=5", "--trainer.log_every_n_steps=1",
            f"--trainer.logger.init_args.save_dir={out}",
            f"--trainer.default_root_dir={out}"]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = [p for p in out.rglob("step5.ckpt")]
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def step_losses(out: Path) -> dict[int, float]:
    import csv

    rows = [row for path in sorted(out.rglob("metrics.csv")) for row in csv.DictReader(path.open())]
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


@pytest.mark.slow
def test_sigterm_in_training_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    cache = tmp_path / "cache"
    whole = subprocess.run(train_args(tmp_path / "whole", cache), cwd=tmp_path, env=ENV, capture_output=True,
                           text=True, timeout=900, check=False)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "stopped"
    proc = start(train_args(out, cache), tmp_path, tmp_path / "log.txt")
    wait_for(proc, lambda: "Training epoch 0: 2/" in (tmp_path / "log.txt").read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    (line,) = error_lines((tmp_path / "log.txt").read_text())
    assert line.startswith("error: stopped by SIGTERM at step ") and "resumable checkpoint " in line
    ckpt = line.split("resumable checkpoint ", 1)[1].split(" (resume:", 1)[0]
    step = int(line.split("at step ", 1)[1].split(";", 1)[0])
    assert Path(ckpt).is_file() and 2 <= step < 5

    resumed = subprocess.run([*train_args(out, cache), f"--ckpt_path={ckpt}"], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # every step trains on the same samples with the same loss as the uninterrupted run (the resumed run's
    # metrics.csv starts at the step after the checkpoint); the weights agree to float32 rounding (a second
    # uninterrupted run was seen to differ by 7e-5 once: CPU reductions whose order follows thread timing)
    whole_losses, resumed = step_losses(tmp_path / "whole"), step_losses(out)
    assert sorted(whole_losses) == list(range(5)) and set(resumed) >= set(range(step, 5))
    assert all(resumed[s] == pytest.approx(whole_losses[s], abs=1e-5) for s in range(step, 5))
    a, b = final_weights(tmp_path / "whole"), final_weights(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a)


@pytest.mark.slow
def test_bad_resume_checkpoint_one_line_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    for name, reason in (("evil", "it holds Python objects that a safe load refuses"),
                         ("garbage", "not a PyTorch checkpoint")):
        proc = subprocess.run([*train_args(tmp_path / "out", tmp_path / "cache"), f"--ckpt_path={tmp_path / name}.ckpt"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = error_lines(proc.stderr)
        assert line.startswith(f"error: --ckpt_path {tmp_path / name}.ckpt: not a checkpoint this run can resume: {reason}")
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "PWNED").exists()
