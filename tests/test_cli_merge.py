"""evaluate.py / train.py: --merge.method / --merge.r / --merge.layers override the merging of every shipped config
(the demo's `compare` rows included); the short --help; training runs save their resolved config."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from vidtldr_pl.cli import VidTLDRCLI, quiet_lightning, run_cli
from vidtldr_pl.cli_help import config_dir
from vidtldr_pl.preflight import resolve_config_args

ROOT = Path(__file__).resolve().parents[1]
FRAGMENTS = {"merging_vidtldr_msrvtt_b16.yaml"}  # stacked on a task config, not run alone


class _ParseOnly(VidTLDRCLI):
    """The CLI up to (and with) the merge override, without building model, data or trainer."""

    def instantiate_classes(self) -> None:
        pass


def _parsed(stage: str, *args: str):
    quiet_lightning()
    cli = _ParseOnly(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     run=False, save_config_callback=None, args=list(args), stage=stage, seed_everything_default=0)
    return cli.config


def _merging(config) -> list:
    """(method, r, layers) of every TokenMerging callback and every compare row."""
    callbacks = [cb.init_args for cb in config.trainer.callbacks or [] if cb.class_path.endswith("TokenMerging")]
    return [(x.method, x.r, x.layers) for x in callbacks + list(config.compare or [])]


def _task_configs() -> list[Path]:
    return sorted(p for p in config_dir().glob("*.yaml") if p.name not in FRAGMENTS)


def _merging_in_yaml(path: Path) -> list:
    """(method, r, layers) of the TokenMerging callbacks and compare rows as written in a config file."""
    raw = yaml.safe_load(path.read_text())
    callbacks = [cb.get("init_args", {}) for cb in (raw.get("trainer") or {}).get("callbacks") or []
                 if cb["class_path"].endswith("TokenMerging")]
    return [(x.get("method", "vidtldr" if x in callbacks else "none"), x.get("r"), x.get("layers"))
            for x in callbacks + list(raw.get("compare") or [])]


def test_every_shipped_config_takes_merge_r():
    configs = _task_configs()
    assert {"demo_umt.yaml", "msrvtt_umt.yaml", "custom_dataset_example.yaml"} <= {p.name for p in configs}
    for path in configs:
        before = _merging_in_yaml(path)
        after = _merging(_parsed("evaluate", "--config", str(path), "--merge.r=[8,4]"))
        assert any(m != "none" for m, _, _ in before), path.name  # every shipped config merges somewhere
        assert len(after) == len(before), path.name
        for (m0, r0, l0), (m1, r1, l1) in zip(before, after):
            assert m1 == m0 and l1 == l0, path.name
            assert r1 == ([8, 4] if m0 != "none" else r0), path.name


def test_merge_r_on_the_demo_keeps_its_comparison():
    config = _parsed("evaluate", "--config", str(config_dir() / "demo_umt.yaml"), "--merge.r=[48,24,12]")
    assert [(row.name, row.method, row.r) for row in config.compare] == [
        ("no merging", "none", None), ("ToMe", "tome", [48, 24, 12]), ("vid-TLDR", "vidtldr", [48, 24, 12])]


def test_merge_method_replaces_compare_rows_and_callback():
    demo = str(config_dir() / "demo_umt.yaml")
    config = _parsed("evaluate", "--config", demo, "--merge.method=tome")
    assert config.compare is None
    assert _merging(config) == [("tome", [72, 36, 18], None)]  # r reused from the config's first merging row
    config = _parsed("evaluate", "--config", demo, "--merge.method=vidtldr", "--merge.r=8", "--merge.layers=[0,2]")
    assert _merging(config) == [("vidtldr", 8, [0, 2])]
    assert [cb.class_path.split(".")[-1] for cb in config.trainer.callbacks] == ["LearningRateMonitor", "TokenMerging"]
    msrvtt = str(config_dir() / "msrvtt_umt.yaml")
    assert _merging(_parsed("fit", "--config", msrvtt, "--merge.method=none")) == [("none", [600, 200, 100], None)]
    assert _merging(_parsed("fit", "--config", msrvtt, "--merge.method=tome", "--merge.r=[100]")) == [
        ("tome", [100], None)]
    stacked = _parsed("evaluate", "--config", msrvtt, "--config", str(config_dir() / "merging_vidtldr_msrvtt_b16.yaml"),
                      "--merge.r=[300,100]")
    assert _merging(stacked) == [("vidtldr", [300, 100], None)]


def test_merge_method_options_and_batching_reach_the_callback():
    """--merge.method_options / --merge.batching travel with --merge.method into the one TokenMerging setting."""
    config = _parsed("evaluate", "--config", str(config_dir() / "demo_videomae.yaml"), "--merge.method=tome_video",
                     "--merge.method_options={mode: hybrid, neighbourhood: spatial}", "--merge.batching=pack")
    (cb,) = [cb.init_args for cb in config.trainer.callbacks if cb.class_path.endswith("TokenMerging")]
    assert cb.method == "tome_video" and cb.method_options == {"mode": "hybrid", "neighbourhood": "spatial"}
    assert cb.batching == "pack" and config.compare is None


@pytest.mark.parametrize("args, message", [
    (["--merge.r=[8]"], "the config has no merging to change (no TokenMerging callback)"),
    (["--merge.method=tomato", "--merge.r=[8]"], "--merge.method=tomato: unknown merge method"),
    (["--merge.method=tome", "--merge.r=[8]", "--merge.method_options={mode: hybrid}"], "mode"),
    (["--merge.method=tome", "--merge.r=[8]", "--merge.batching=zip"], "unknown batching 'zip'"),
])
def test_merge_errors_are_one_line(args, message, capsys):
    # train.py on the demo: its comparison rows do not train, and it has no TokenMerging callback
    with pytest.raises(SystemExit) as exit_info:
        _parsed("fit", "--config", str(config_dir() / "demo_umt.yaml"), *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --merge.") and message in err


def _run(stage: str, *args: str, cwd: Path, monkeypatch) -> int:
    """evaluate.py (stage "evaluate") / train.py ("fit") in this process, from ``cwd`` (what a run writes by default
    lands there)."""
    monkeypatch.chdir(cwd)
    return run_cli(stage, resolve_config_args(list(args)))


TINY = """
model: {class_path: cli_modules.TokenCounter}
data: {class_path: cli_modules.TinyVideoData}
trainer: {accelerator: cpu, logger: false, enable_progress_bar: false}
compare:
  - {name: plain, method: none}
  - {name: ToMe, method: tome, r: [16, 8]}
  - {name: vid-TLDR, method: vidtldr, r: [16, 8]}
"""


def test_evaluate_runs_with_merge_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    assert _run("evaluate", "--config", str(cfg), "--merge.r=[16]", "--results=a.json", cwd=tmp_path,
                monkeypatch=monkeypatch) == 0
    rows = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert [(r["name"], r["final_tokens"]) for r in rows] == [("plain", 64.0), ("ToMe", 48.0), ("vid-TLDR", 48.0)]
    assert _run("evaluate", "--config", str(cfg), "--merge.method=tome", "--merge.r=8", "--merge.layers=[0]",
                "--results=b.json", cwd=tmp_path, monkeypatch=monkeypatch) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert [(r["method"], r["final_tokens"]) for r in rows] == [("tome", 56.0)]


def test_short_help_then_full_help(tmp_path, monkeypatch, capsys):
    for script, stage, first in (("evaluate.py", "evaluate", "Evaluate a video model"),
                                 ("train.py", "fit", "Fine-tune a video model")):
        assert _run(stage, "--help", cwd=tmp_path, monkeypatch=monkeypatch) == 0
        text = capsys.readouterr().out
        lines = text.splitlines()
        assert lines[0].startswith(f"usage: {script} --config CONFIG") and lines[2].startswith(first)
        assert len(lines) < 80
        for option in ("--config", "--data.init_args.data_root", "--model.init_args.checkpoint", "--merge.method",
                       "--merge.r", "--help-all", "demo_umt.yaml"):
            assert option in text, (script, option)
        if stage == "evaluate":
            assert all(o in text for o in ("--compare", "--split", "--results"))
        else:
            assert "--ckpt_path" in text
        assert sum(line.lstrip().startswith("python ") for line in lines) == 3  # three examples
    with pytest.raises(SystemExit) as exit_info:
        _run("evaluate", "--help-all", cwd=tmp_path, monkeypatch=monkeypatch)
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--trainer.max_epochs" in text and "--merge.layers" in text
    assert "Evaluate a video model" in text
    # the script answers -h before importing Lightning
    out = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "evaluate.py"), "-h"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: evaluate.py --config CONFIG")
    assert "lightning" not in out.stderr and "torch" not in out.stderr


FIT = """
model: {class_path: test_cli_merge.TinyFit}
data: {class_path: test_cli_merge.TinyFitData}
trainer: {accelerator: cpu, max_epochs: 1, logger: false, enable_checkpointing: false, enable_model_summary: false}
"""


class TinyFit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        import torch

        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        import torch

        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyFitData(pl.LightningDataModule):
    def train_dataloader(self):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)


def test_training_saves_its_resolved_config_and_a_second_run_does_not_abort(tmp_path, monkeypatch):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(FIT)
    for _ in range(2):
        assert _run("fit", "--config", str(cfg), "--trainer.max_steps=1", cwd=tmp_path, monkeypatch=monkeypatch) == 0
    saved = sorted(tmp_path.glob("config*.yaml"))  # logger false: the log folder is default_root_dir (the cwd)
    assert [p.name for p in saved][0] == "config.yaml" and len(saved) == 2, saved
    for path in saved:
        resolved = yaml.safe_load(path.read_text())
        assert resolved["model"]["class_path"] == "test_cli_merge.TinyFit"
        assert resolved["trainer"]["max_steps"] == 1  # the command line is in it, not only the file
