"""The embedded QA demo: the shipped UMT-QA weights and their provenance, and the README's command run for real on
the whole test split."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from readme_demo import readme_table, run_demo
from vidtldr_pl.backbones import create_model, pretrained_cfg
from vidtldr_pl.backbones.registry import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_qa_umt.yaml"
COMMAND = "python evaluate.py --config configs/demo_qa_umt.yaml"


def test_shipped_weights_load_strictly_and_match_their_provenance():
    path = WEIGHTS_DIR / pretrained_cfg("umt_qa_demo").builtin_weights["umt_qa_demo_synthetic"]
    assert path.stat().st_size < 13 * 2**20
    create_model("umt_qa_demo", checkpoint="builtin:umt_qa_demo_synthetic")  # strict: every key and shape
    provenance = json.loads((WEIGHTS_DIR / "umt_qa_demo_synthetic.json").read_text())
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "train.py --config configs/demo_qa_umt.yaml" in provenance["command"]
    assert "pretrained=builtin:umt_demo_synthetic" in provenance["command"]
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["model"]["init_args"]["checkpoint"] == "builtin:umt_qa_demo_synthetic"
    assert provenance["seed"]["data.seed"] == cfg["data"]["init_args"]["seed"]
    assert [row["epoch"] for row in provenance["stages"][-1]["validation"]] == [0, 1]


@pytest.mark.slow
def test_readme_command_answers_with_the_shipped_model(tmp_path):
    """The README's command on the whole test split: the rows come from the run and match the README's table."""
    proc, runs = run_demo("configs/demo_qa_umt.yaml", tmp_path)
    assert [r["method"] for r in runs] == ["none", "tome", "vidtldr"]
    plain = runs[0]
    assert plain["num_questions"] == 500 and plain["num_missing"] == 0
    assert plain["acc/count"] > 80 and plain["acc/size"] > 80 and plain["acc"] > 40  # chance 50 / 50 / ~24
    table = readme_table("## The QA demo", COMMAND)
    for row in runs:
        assert row["name"] in proc.stdout and row["videos_per_s"] > 0
        for column, key in ((0, "acc"), (1, "acc/colour"), (4, "acc/shape")):
            assert abs(float(table[row["name"]][column]) - row[key]) <= 1.0, (row["name"], key)
