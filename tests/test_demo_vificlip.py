"""The embedded zero-shot demo: the shipped ViFi-CLIP-style weights and their provenance, the training config, and
the README's command run for real on the action benchmark's whole test split."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from readme_demo import readme_table, run_demo
from vidtldr_pl.data_modules.synthetic_actions import ACTIONS
from vidtldr_pl.backbones import create_model, pretrained_cfg
from vidtldr_pl.backbones.registry import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_vificlip.yaml"
COMMAND = "python evaluate.py --config configs/demo_vificlip.yaml"


def test_shipped_weights_load_strictly_and_match_their_provenance():
    path = WEIGHTS_DIR / pretrained_cfg("vificlip_demo").builtin_weights["vificlip_demo_synthetic"]
    assert path.stat().st_size < 13 * 2**20
    model = create_model("vificlip_demo", checkpoint="builtin:vificlip_demo_synthetic")  # strict
    assert model.encoder.num_prefix_tokens == 1
    provenance = json.loads((WEIGHTS_DIR / "vificlip_demo_synthetic.json").read_text())
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "train.py --config configs/demo_vificlip_train.yaml" in provenance["command"]
    assert provenance["stages"][-1]["validation"]


def test_prompts_are_the_action_classes_in_label_order():
    """The config's class names say each class in the captions' words, in the benchmark's label order."""
    names = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["class_names"]
    assert [n.replace(" moves ", " moving ") for n in names] == list(ACTIONS)


@pytest.mark.slow
def test_readme_command_classifies_zero_shot(tmp_path):
    """The README's command on the whole test split: five rows, CLS never merged (37 -> 19 tokens a frame), the
    README's table is this run."""
    cfg = yaml.safe_load(CONFIG.read_text())
    proc, runs = run_demo("configs/demo_vificlip.yaml", tmp_path)
    assert [r["name"] for r in runs] == [c["name"] for c in cfg["compare"]]
    plain, *merged = runs
    assert plain["num_videos"] == cfg["data"]["init_args"]["num_test"] and plain["top1"] > 100 / 12
    assert plain["tokens_per_layer"] == [37] * 6
    assert all(r["tokens_per_layer"] == [29, 23, 19, 19, 19, 19] for r in merged)
    table = readme_table("## The ViFi-CLIP demo", COMMAND)
    for row in runs:
        assert row["name"] in proc.stdout
        assert abs(float(table[row["name"]][0]) - row["top1"]) <= 0.5, row["name"]
