"""The embedded QA demo: the shipped UMT-QA weights and their provenance, and the README's command run for real on
the whole test split."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def _readme_table() -> dict[str, list[str]]:
    readme = (ROOT / "README.md").read_text()
    assert COMMAND in readme
    section = readme[readme.index("## The QA demo"):]
    section = section[:section.index("\n## ", 5)]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | acc | colour"))
    table = []
    for line in lines[start:]:  # the QA table, up to the first line that is not a table row
        if not line.startswith("|"):
            break
        table.append(line)
    rows = [line.strip("|").split("|") for line in table if not line.startswith("|---")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


@pytest.mark.slow
def test_readme_command_answers_with_the_shipped_model(tmp_path):
    """The README's command on the whole test split: the rows come from the run and match the README's table."""
    out = tmp_path / "qa.json"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--config", "configs/demo_qa_umt.yaml", f"--results={out}",
         f"--data.init_args.cache_dir={tmp_path / 'synthetic'}", "--trainer.logger=false"],
        cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["method"] for r in runs] == ["none", "tome", "vidtldr"]
    plain = runs[0]
    assert plain["num_questions"] == 500 and plain["num_missing"] == 0
    assert plain["acc/count"] > 80 and plain["acc/size"] > 80 and plain["acc"] > 40  # chance 50 / 50 / ~24
    table = _readme_table()
    for row in runs:
        assert row["name"] in proc.stdout and row["videos_per_s"] > 0
        for column, key in ((0, "acc"), (1, "acc/colour"), (4, "acc/shape")):
            assert abs(float(table[row["name"]][column]) - row[key]) <= 1.0, (row["name"], key)
