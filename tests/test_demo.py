"""The embedded demo: the shipped weights, the demo config and the README's main command, run for real."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from readme_demo import run_demo
from vidtldr_pl.backbones import create_model, pretrained_cfg
from vidtldr_pl.backbones.registry import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_umt.yaml"


def test_shipped_weights_load_strictly_and_are_small():
    preset = "umt_demo"
    file = pretrained_cfg(preset).builtin_weights["umt_demo_synthetic"]
    path = WEIGHTS_DIR / file
    assert path.stat().st_size <= 20 * 10**6
    model = create_model(preset, checkpoint="builtin:umt_demo_synthetic")  # strict: every key, every shape
    assert sum(p.numel() for p in model.parameters()) > 4_000_000
    provenance = json.loads((WEIGHTS_DIR / "umt_demo_synthetic.json").read_text())
    assert "train.py --config configs/demo_umt.yaml" in provenance["command"] and "seed" in provenance


def test_unknown_builtin_weights_name_is_a_clear_error():
    with pytest.raises(ValueError, match="builtin:umt_demo_synthetic"):
        create_model("umt_demo", checkpoint="builtin:nope")


@pytest.mark.slow  # 500 clips generated and evaluated three times (about 80 s on 2 idle cores)
def test_readme_main_command_evaluates_the_shipped_model(tmp_path):
    """The README's main command on the full 500-clip test split: the three rows come from the run."""
    readme = (ROOT / "README.md").read_text()
    assert "python evaluate.py --config configs/demo_umt.yaml" in readme
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["data"]["init_args"]["num_test"] >= 500
    proc, runs = run_demo("configs/demo_umt.yaml", tmp_path)
    assert [r["name"] for r in runs] == [c["name"] for c in cfg["compare"]]
    plain, tome, vidtldr = runs
    assert plain["num_videos"] == cfg["data"]["init_args"]["num_test"]
    assert plain["itm/img_r1"] > 30.0, plain  # far above chance (0.2 %) over 500 clips
    assert tome["tokens_per_layer"] == vidtldr["tokens_per_layer"] != plain["tokens_per_layer"]  # matched counts
    assert vidtldr["gflops"] < plain["gflops"] and tome["gflops"] < plain["gflops"]
    for row in runs:
        assert row["videos_per_s"] and row["videos_per_s"] > 0
        assert row["name"] in proc.stdout
