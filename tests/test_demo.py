"""The embedded demo: the shipped weights, the demo config and the README's main command, run for real."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vidtldr_pl.backbones.umt.model import BUILTIN_WEIGHTS, WEIGHTS_DIR, create_umt

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_umt.yaml"


def test_shipped_weights_load_strictly_and_are_small():
    file, preset = BUILTIN_WEIGHTS["umt_demo_synthetic"]
    path = WEIGHTS_DIR / file
    assert path.stat().st_size <= 20 * 10**6
    model = create_umt(preset, checkpoint="builtin:umt_demo_synthetic")  # strict: every key, every shape
    assert sum(p.numel() for p in model.parameters()) > 4_000_000
    provenance = json.loads((WEIGHTS_DIR / "umt_demo_synthetic.json").read_text())
    assert "train.py --config configs/demo_umt.yaml" in provenance["command"] and "seed" in provenance


def test_unknown_builtin_weights_name_is_a_clear_error():
    with pytest.raises(ValueError, match="builtin:umt_demo_synthetic"):
        create_umt("umt_demo", checkpoint="builtin:nope")


@pytest.mark.slow  # 500 clips generated and evaluated three times (about 80 s on 2 idle cores)
def test_readme_main_command_evaluates_the_shipped_model(tmp_path):
    """The README's main command on the full 500-clip test split: the three rows come from the run."""
    readme = (ROOT / "README.md").read_text()
    assert "python evaluate.py --config configs/demo_umt.yaml" in readme
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["data"]["init_args"]["num_test"] >= 500
    out = tmp_path / "demo.json"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--config", "configs/demo_umt.yaml", f"--results={out}",
         f"--data.init_args.cache_dir={tmp_path / 'synthetic'}", "--trainer.logger=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["name"] for r in runs] == [c["name"] for c in cfg["compare"]]
    plain, tome, vidtldr = runs
    assert plain["num_videos"] == cfg["data"]["init_args"]["num_test"]
    assert plain["itm/img_r1"] > 30.0, plain  # far above chance (0.2 %) over 500 clips
    assert tome["tokens_per_layer"] == vidtldr["tokens_per_layer"] != plain["tokens_per_layer"]  # matched counts
    assert vidtldr["gflops"] < plain["gflops"] and tome["gflops"] < plain["gflops"]
    for row in runs:
        assert row["videos_per_s"] and row["videos_per_s"] > 0
        assert row["name"] in proc.stdout
