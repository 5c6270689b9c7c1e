"""The embedded action demo: the shipped VideoMAE-style weights, the demo config and the README's command, run for
real on the whole test split; the script that ships demo weights."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from readme_demo import readme_table, run_demo
from vidtldr_pl.backbones import create_model, list_models, pretrained_cfg
from vidtldr_pl.backbones.registry import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_videomae.yaml"
COMMAND = "python evaluate.py --config configs/demo_videomae.yaml"


def _ship_script():
    spec = importlib.util.spec_from_file_location("ship_demo_weights", ROOT / "tools" / "ship_demo_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_shipped_weights_load_strictly_and_match_their_provenance():
    assert "videomae_demo" in list_models(task="classification")
    file = pretrained_cfg("videomae_demo").builtin_weights["videomae_demo_synthetic"]
    path = WEIGHTS_DIR / file
    assert path.stat().st_size < 10 * 10**6
    model = create_model("videomae_demo", checkpoint="builtin:videomae_demo_synthetic")  # strict: keys and shapes
    assert model.head.out_features == 12
    provenance = json.loads((WEIGHTS_DIR / "videomae_demo_synthetic.json").read_text())
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "train.py --config configs/demo_videomae.yaml" in provenance["command"]
    assert provenance["seed"]["data.seed"] == yaml.safe_load(CONFIG.read_text())["data"]["init_args"]["seed"]
    assert provenance["stages"][-1]["validation"], "the validation top-1 of every epoch"


def test_ship_script_exports_a_classifier_that_loads_strictly(tmp_path):
    ship = _ship_script()
    model = create_model("videomae_tiny")
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, ckpt)
    out = ship.export_weights(ckpt, tmp_path / "w.safetensors", "videomae_tiny")
    loaded = create_model("videomae_tiny", checkpoint=str(out))
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.half().float(), b), k
    torch.save({"state_dict": {"model.head.weight": torch.zeros(10, 64)}}, ckpt)  # not the whole model: refused
    with pytest.raises(Exception, match="does not fit"):
        ship.export_weights(ckpt, tmp_path / "bad.safetensors", "videomae_tiny")


def test_ship_script_reads_every_validation_epoch_of_resumed_logs(tmp_path):
    ship = _ship_script()
    first, second = tmp_path / "version_0", tmp_path / "version_1"
    for folder, rows in ((first, [(0, 99, 50.0), (1, 199, 60.0)]), (second, [(1, 199, 61.0), (2, 299, 70.0)])):
        folder.mkdir()
        lines = ["epoch,step,top1,top5,train/loss"] + [f"{e},{s},{t},{t + 20},"for e, s, t in rows]
        lines.insert(2, "0,50,,,2.3")  # a training row
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    history = ship.validation_history([first, second], ship.DEMOS["videomae_demo_synthetic"].metrics)
    assert [(r["epoch"], r["top1"]) for r in history] == [(0, 50.0), (1, 61.0), (2, 70.0)]


@pytest.mark.slow
def test_readme_command_evaluates_the_shipped_model(tmp_path):
    """The README's command on the whole test split: the four rows come from the run and match the README's table."""
    cfg = yaml.safe_load(CONFIG.read_text())
    proc, runs = run_demo("configs/demo_videomae.yaml", tmp_path)
    assert [r["name"] for r in runs] == [c["name"] for c in cfg["compare"]]
    assert [r["method"] for r in runs] == ["none", "tome", "vidtldr", "random"]
    plain, *merged = runs
    assert plain["num_videos"] == cfg["data"]["init_args"]["num_test"] and plain["num_views"] == 1
    assert plain["top1"] > 40.0, plain  # chance is 8.3 % (12 balanced classes)
    assert plain["top5"] >= plain["top1"]
    assert all(r["tokens_per_layer"] == merged[0]["tokens_per_layer"] != plain["tokens_per_layer"] for r in merged)
    assert all(r["gflops"] < 0.7 * plain["gflops"] for r in merged)  # the schedule about halves the encoder
    for row in runs:
        assert row["videos_per_s"] > 0 and row["name"] in proc.stdout
    table = readme_table("## The action demo", COMMAND)
    for row in runs:  # the README's table is a real run: same accuracy (CPU kernels may flip a clip or two)
        top1 = float(table[row["name"]][0])
        assert abs(top1 - row["top1"]) <= 0.5, (row["name"], top1, row["top1"])
