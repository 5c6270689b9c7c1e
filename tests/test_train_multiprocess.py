"""train.py itself with several processes, as a user launches it: Lightning's DDP launcher, torchrun, two torchrun
"nodes" on 127.0.0.1 and a SLURM job (its environment simulated, one process per task as srun starts them), with and
without a logger, each resumed with --ckpt_path in the same mode; the exported weights evaluated by evaluate.py.
Also the one-line refusals of DeepSpeed on a machine without CUDA and of a bad checkpoint given to the exporter.

Every run is configs/demo_umt.yaml with tiny overrides (16 training clips, 2 steps per epoch, 8 validation clips)."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from vidtldr_pl.export import main as export_main
from vidtldr_pl.strategy_check import strategy_problem

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
# the documented command on a CPU (precision: ddp.yaml's bf16-mixed)
DDP = ["--config", "configs/demo_umt.yaml", "--config", "strategies/ddp.yaml", "--trainer.accelerator=cpu"]


def data(cache: Path) -> list[str]:
    """The demo DataModule, small: 16 training, 8 validation and 8 test clips of 8 frames at 96 px."""
    return [f"--data.init_args.cache_dir={cache}", "--data.init_args.num_train=16", "--data.init_args.num_val=8",
            "--data.init_args.num_test=8", "--data.init_args.clip_frames=8", "--data.init_args.clip_size=96",
            "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4", "--data.init_args.num_workers=0"]


def tiny(cache: Path, max_steps: int = 2) -> list[str]:
    """A few seconds of training: 2 batches of 4 clips per process and epoch, validation on 8 clips."""
    return [f"--trainer.max_steps={max_steps}", "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0",
            *data(cache)]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the variables of a launcher or a cluster (a test run inside a SLURM job or torchrun
    must not hand them to the runs it starts), one thread per process."""
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "NODE_RANK")
    env = {k: v for k, v in os.environ.items()
           if k not in launcher and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands: list[list[str]], cwd: Path,
            envs: list[dict[str, str]] | None = None) -> list[tuple[int, str, str]]:
    """Start the commands together (the processes of one job), wait for all; on a timeout kill every process group,
    so that a rank left waiting for a dead peer does not outlive the test. Output goes to files (a full pipe would
    block one rank while the other waits for it). Returns (exit code, stdout, stderr) per command."""
    envs = envs or [clean_env()] * len(commands)
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in commands]
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
             for cmd, env, (out, err) in zip(commands, envs, files)]
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    results = []
    for p, (out, err) in zip(procs, files):
        out.seek(0), err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close(), err.close()
    return results


def train(args: list[str], cwd: Path) -> tuple[str, str]:
    """``python train.py ARGS`` (Lightning launches the other DDP processes); (stdout, stderr), asserting exit 0."""
    ((code, out, err),) = run_all([[sys.executable, str(ROOT / "train.py"), *args]], cwd)
    assert code == 0, err[-4000:]
    return out, err


def checkpoints_line(stdout: str) -> dict[str, str]:
    """train.py's closing line ``checkpoints: best by M PATH, last PATH (config: PATH)`` as {what: path}."""
    lines = [line for line in stdout.splitlines() if line.startswith("checkpoints: ")]
    assert len(lines) == 1, stdout[-3000:]  # printed once, by rank 0
    body, config = re.fullmatch(r"checkpoints: (.*) \(config: (.*)\)", lines[0]).groups()
    found = {"config": config}
    for part in body.split(", "):
        what, path = part.rsplit(" ", 1)
        found["best" if what.startswith("best") else what] = path
    return found


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def assert_two_processes(stderr: str) -> None:
    """Lightning's distributed start: both members registered, one world of 2."""
    assert "Starting with 2 processes" in stderr, stderr[-3000:]
    assert {m for m in re.findall(r"MEMBER: (\d/\d)", stderr)} == {"1/2", "2/2"}, stderr[-3000:]


@pytest.mark.slow
def test_ddp_with_logger_resume_export_evaluate(tmp_path):
    """The documented DDP command on CPU: a versioned run folder, its config and checkpoints, the line naming them;
    the resume continues in version_1 at step 2; the newest of both runs' last.ckpt exported (a quoted glob) and
    evaluated by evaluate.py, which reproduces the run's own final validation."""
    cache = tmp_path / "synthetic"
    fp32 = "--trainer.precision=32-true"  # the demo's own precision: evaluate.py (fp32) must equal the validation
    out, err = train([*DDP, fp32, "--trainer.devices=2", *tiny(cache)], tmp_path)
    assert_two_processes(err)
    run0 = Path("outputs/demo_umt/lightning_logs/version_0")
    written = checkpoints_line(out)
    assert written["last"] == str(run0 / "checkpoints" / "last.ckpt")
    assert written["best"].startswith(str(run0 / "checkpoints" / "best-epoch0-"))
    assert written["config"] == str(run0 / "config.yaml")
    assert "strategy: ddp" in (tmp_path / written["config"]).read_text()
    assert step_of(tmp_path / written["last"]) == 2

    out, err = train([*DDP, fp32, "--trainer.devices=2", *tiny(cache, max_steps=4), f"--ckpt_path={written['last']}"],
                     tmp_path)
    assert "Restored all states from the checkpoint" in err
    run1 = Path("outputs/demo_umt/lightning_logs/version_1")
    resumed = checkpoints_line(out)
    assert resumed["last"] == str(run1 / "checkpoints" / "last.ckpt") and resumed["config"] == str(run1 / "config.yaml")
    assert step_of(tmp_path / resumed["last"]) == 4
    assert sorted(p.name for p in (tmp_path / run1.parent).iterdir()) == ["version_0", "version_1"]  # no stray one

    export = subprocess.run([sys.executable, "-m", "vidtldr_pl.export",
                             "outputs/demo_umt/lightning_logs/version_*/checkpoints/last.ckpt", "w.safetensors"],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert export.returncode == 0, export.stderr[-3000:]
    assert f"2 checkpoints match; exporting the newest: {resumed['last']}" in export.stdout
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "w.safetensors"))
    state = torch.load(tmp_path / resumed["last"], map_location="cpu", weights_only=False)["state_dict"]
    assert exported.keys() == {k[len("model."):] for k in state}
    assert all(torch.equal(v, state["model." + k].reshape(v.shape)) for k, v in exported.items())

    evaluate = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--config", "configs/demo_umt.yaml",
         "--model.init_args.checkpoint=w.safetensors", "--split=validate", "--merge.method=none",
         "--trainer.logger=false", "--results=results.json", *data(cache)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    (row,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert row["num_videos"] == 8
    with (tmp_path / run1 / "metrics.csv").open() as f:
        validation = [r for r in csv.DictReader(f) if r.get("itm/img_r1")]
    assert validation and validation[-1]["step"] == "4"
    keys = [k for k in row if k.startswith(("itm/", "itc/"))]
    assert len(keys) == 26
    assert {k: row[k] for k in keys} == pytest.approx({k: float(validation[-1][k]) for k in keys}, abs=1e-3)


@pytest.mark.slow
def test_torchrun_without_logger_resume(tmp_path):
    """``torchrun --nproc-per-node=2 train.py ... --trainer.logger=false``: config and checkpoints in
    default_root_dir, the resume into the same folder keeps the first config (a second, time-stamped one)."""
    cache = tmp_path / "synthetic"

    def torchrun(*args: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                str(ROOT / "train.py"), *DDP, "--trainer.devices=2", "--trainer.logger=false", *args]

    ((code, out, err),) = run_all([torchrun(*tiny(cache))], tmp_path)
    assert code == 0, err[-4000:]
    assert_two_processes(err)
    assert "Using bfloat16 Automatic Mixed Precision" in err
    written = checkpoints_line(out)
    assert written["last"] == "outputs/demo_umt/checkpoints/last.ckpt"
    assert written["config"] == "outputs/demo_umt/config.yaml"
    assert step_of(tmp_path / written["last"]) == 2

    ((code, out, err),) = run_all([torchrun(*tiny(cache, max_steps=4), f"--ckpt_path={written['last']}")], tmp_path)
    assert code == 0, err[-4000:]
    assert "Restored all states from the checkpoint" in err
    resumed = checkpoints_line(out)
    assert resumed["last"] == written["last"] and step_of(tmp_path / resumed["last"]) == 4
    assert re.fullmatch(r"outputs/demo_umt/config_\d{8}-\d{6}\.yaml", resumed["config"])
    assert (tmp_path / written["config"]).is_file() and (tmp_path / resumed["config"]).is_file()
    assert not (tmp_path / "outputs/demo_umt/lightning_logs").exists()


def _nodes(tmp_path: Path, cache: Path, extra: list[str]) -> list[tuple[int, str, str]]:
    """Two torchrun "nodes" of one process each on 127.0.0.1 (both generate the data on first use together)."""
    port = free_port()
    return run_all([[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                     f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
                     str(ROOT / "train.py"), *DDP, "--trainer.devices=1", "--trainer.num_nodes=2", *tiny(cache),
                     *extra] for rank in (0, 1)], tmp_path)


@pytest.mark.slow
def test_two_nodes_with_logger_resume(tmp_path):
    cache = tmp_path / "synthetic"
    runs = _nodes(tmp_path, cache, [])
    assert all(code == 0 for code, _, _ in runs), "\n".join(err[-3000:] for _, _, err in runs)
    assert_two_processes(runs[0][2] + runs[1][2])
    assert "checkpoints: " not in runs[1][1]  # rank 1 (node 1) prints no closing line
    written = checkpoints_line(runs[0][1])
    assert written["last"] == "outputs/demo_umt/lightning_logs/version_0/checkpoints/last.ckpt"
    assert step_of(tmp_path / written["last"]) == 2

    runs = _nodes(tmp_path, cache, ["--trainer.max_steps=4", f"--ckpt_path={written['last']}"])
    assert all(code == 0 for code, _, _ in runs), "\n".join(err[-3000:] for _, _, err in runs)
    resumed = checkpoints_line(runs[0][1])
    assert resumed["last"] == "outputs/demo_umt/lightning_logs/version_1/checkpoints/last.ckpt"
    assert step_of(tmp_path / resumed["last"]) == 4
    versions = sorted(p.name for p in (tmp_path / "outputs/demo_umt/lightning_logs").iterdir())
    assert versions == ["version_0", "version_1"]  # one folder per run, none reserved by the other node


def _slurm(tmp_path: Path, cache: Path, extra: list[str]) -> list[tuple[int, str, str]]:
    """A 2-node x 1-task SLURM job as Lightning reads it: one process per task with the variables srun sets, and
    tools/slurm_train.sbatch's trainer arguments."""
    job = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vidtldr-ft", "SLURM_NODELIST": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    envs = [clean_env(**job, SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NODEID=str(rank)) for rank in (0, 1)]
    cmd = [sys.executable, str(ROOT / "train.py"), *DDP, "--trainer.num_nodes=2", "--trainer.devices=1",
           "--trainer.default_root_dir=outputs/vidtldr-ft", "--trainer.logger=false", *tiny(cache), *extra]
    return run_all([cmd, cmd], tmp_path, envs)


@pytest.mark.slow
def test_slurm_job_without_logger_resume(tmp_path):
    cache = tmp_path / "synthetic"
    runs = _slurm(tmp_path, cache, [])
    assert all(code == 0 for code, _, _ in runs), "\n".join(err[-3000:] for _, _, err in runs)
    assert_two_processes(runs[0][2] + runs[1][2])
    written = checkpoints_line(runs[0][1])
    assert written["last"] == "outputs/vidtldr-ft/checkpoints/last.ckpt"
    assert written["config"] == "outputs/vidtldr-ft/config.yaml"
    assert step_of(tmp_path / written["last"]) == 2

    runs = _slurm(tmp_path, cache, ["--trainer.max_steps=4", f"--ckpt_path={written['last']}"])
    assert all(code == 0 for code, _, _ in runs), "\n".join(err[-3000:] for _, _, err in runs)
    assert "Restored all states from the checkpoint" in runs[0][2]
    resumed = checkpoints_line(runs[0][1])
    assert resumed["last"] == written["last"] and step_of(tmp_path / resumed["last"]) == 4


def test_deepspeed_without_cuda_is_one_line(tmp_path):
    """DeepSpeed on a machine without CUDA (hidden here with CUDA_VISIBLE_DEVICES=""): one error line naming the
    reason, exit code 2, before the model or the data are built."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "configs/demo_umt.yaml", "--config",
                           "strategies/deepspeed_zero2.yaml", f"--data.init_args.cache_dir={tmp_path / 'synthetic'}"],
                          cwd=tmp_path, env=clean_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: the DeepSpeed strategy (deepspeed_stage_2) needs a CUDA GPU"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "synthetic").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("trainer,cuda,deepspeed,expected", [
    ({"strategy": "deepspeed_stage_3", "accelerator": "auto"}, False, True, "needs a CUDA GPU"),
    ({"strategy": {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy"}, "accelerator": "gpu"}, False, True,
     "needs a CUDA GPU"),
    ({"strategy": "deepspeed_stage_2", "accelerator": "cpu"}, True, True, "not with trainer.accelerator=cpu"),
    ({"strategy": "deepspeed_stage_2", "accelerator": "gpu"}, True, False, "pip install -e '.[deepspeed]'"),
    ({"strategy": "deepspeed_stage_2", "accelerator": "gpu"}, True, True, None),
    ({"strategy": "ddp", "accelerator": "gpu"}, False, True, "trainer.accelerator is gpu but this machine has no GPU"),
    ({"strategy": "ddp", "accelerator": "cpu"}, False, False, None),
    ({"strategy": "auto", "accelerator": "auto"}, False, False, None),
])
def test_strategy_problem(trainer, cuda, deepspeed, expected):
    from jsonargparse import Namespace

    def ns(d):
        return Namespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})

    reason = strategy_problem(ns(trainer), cuda=cuda, mps=False, deepspeed_installed=deepspeed)
    assert (reason is None) if expected is None else (expected in reason)


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """``python -m vidtldr_pl.export`` on a missing, unreadable or wrong checkpoint: one ``error:`` line, exit 2."""
    (tmp_path / "garbage.ckpt").write_text("not a checkpoint")
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, tmp_path / "classifier.ckpt")
    cases = {"missing.ckpt": "error: checkpoint not found: missing.ckpt",
             "garbage.ckpt": "error: garbage.ckpt is not a PyTorch checkpoint",
             "classifier.ckpt": "error: classifier.ckpt: no vision_encoder.* weights"}
    for src, message in cases.items():  # as a user runs it
        proc = subprocess.run([sys.executable, "-m", "vidtldr_pl.export", src, "w.safetensors"], cwd=tmp_path,
                              env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 2 and proc.stderr.startswith(message), (src, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    monkeypatch.chdir(tmp_path)
    for argv, message in [  # the rest of the command line in-process (same main)
        (["outputs/*/checkpoints/*.ckpt", "w.safetensors"],
         "error: no checkpoint matches outputs/*/checkpoints/*.ckpt"),
        (["garbage.ckpt", "classifier.ckpt"],  # a shell glob that swallowed the destination: nothing overwritten
         "error: the output must end in .safetensors or .pth, got classifier.ckpt"),
        ([".", "w.pth"], "error: . is a folder but not a DeepSpeed checkpoint"),
    ]:
        assert export_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(message) and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "w.safetensors").exists() and not (tmp_path / "w.pth").exists()
