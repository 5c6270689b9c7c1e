"""evaluate.py: YAML config with the merging callback, command-line overrides, config lookup in configs/."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """evaluate.py run from ``cwd`` (a temporary folder: whatever the run writes by default lands there, and shipped
    configs are found by name from any directory)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_evaluate_with_merging_config(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
model: {class_path: cli_modules.TokenCounter}
data: {class_path: cli_modules.TinyVideoData}
trainer:
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: vidtldr_pl.callbacks.TokenMerging
      init_args: {method: vidtldr, r: [16, 8]}
""")
    out = _run("--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "final_tokens" in out.stdout and "40.0" in out.stdout
    assert list((tmp_path / "outputs").glob("results_*.json"))  # without --results / logger: under the run's cwd
    out = _run("--config", str(cfg), "--trainer.callbacks.init_args.r=[16]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "48.0" in out.stdout


def test_evaluate_compares_merge_settings_and_writes_json(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
model: {class_path: cli_modules.TokenCounter}
data: {class_path: cli_modules.TinyVideoData}
trainer: {accelerator: cpu, logger: false, enable_progress_bar: false}
compare:
  - {name: plain, method: none}
  - {method: vidtldr, r: [16, 8]}
  - {name: tome-one, method: tome, r: 8, layers: [0]}
""")
    results = tmp_path / "out" / "res.json"
    out = _run("--config", str(cfg), f"--results={results}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(results.read_text())["runs"]
    assert [(r["name"], r["method"], r["final_tokens"]) for r in rows] == [
        ("plain", "none", 64.0), ("vidtldr", "vidtldr", 40.0), ("tome-one", "tome", 56.0)]
    for name in ("plain", "vidtldr", "tome-one", "final_tokens", "res.json"):
        assert name in out.stdout


def test_missing_config_is_a_short_message(tmp_path):
    out = _run("--config", "no_such_config.yaml", cwd=tmp_path)
    assert out.returncode != 0 and "config file not found: no_such_config.yaml" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_root_is_a_short_message(tmp_path):
    cfg = tmp_path / "msrvtt_missing.yaml"
    cfg.write_text(f"""
model: {{class_path: cli_modules.TokenCounter}}
data:
  class_path: vidtldr_pl.data_modules.retrieval.MSRVTTDataModule
  init_args: {{data_root: {tmp_path / "no_msrvtt"}}}
trainer: {{accelerator: cpu, logger: false}}
""")
    out = _run("--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    # answered before the model is built (vidtldr_pl.preflight), naming the folder and the config it came from
    assert f"error: data root {tmp_path / 'no_msrvtt'} ({cfg}) is not a folder" in out.stderr
    assert "Traceback" not in out.stderr


def test_msrvtt_config_without_checkpoint_or_data_is_a_short_message(tmp_path):
    out = _run("--config", "msrvtt_umt.yaml", f"--data.init_args.data_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: checkpoint file not found: checkpoints/umt_b16_msrvtt_ft.pth" in out.stderr
    assert "MODEL_ZOO" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # four train.py runs
def test_strategy_configs_merge_into_a_task_config():
    from lightning.pytorch.strategies import StrategyRegistry

    strategies = sorted((ROOT / "configs" / "strategies").glob("*.yaml"))
    assert {p.stem for p in strategies} >= {"ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"}
    for path in strategies:
        out = subprocess.run([sys.executable, "train.py", "--config", "msrvtt_umt.yaml", "--config", str(path),
                              "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        import yaml

        cfg = yaml.safe_load(out.stdout)
        assert cfg["trainer"]["strategy"] in StrategyRegistry, path.name
        assert cfg["model"]["class_path"] == "vidtldr_pl.tasks.RetrievalTask"
        assert cfg["model"]["init_args"]["lr"] == 1e-5 and cfg["trainer"]["max_epochs"] == 10  # official MSRVTT B/16
        assert cfg["trainer"]["callbacks"][0]["init_args"]["r"] == [600, 200, 100]
        if "offload" in path.name:
            assert cfg["model"]["init_args"]["optimizer"] == "deepspeed_cpu_adam"
