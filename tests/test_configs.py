"""The committed per-dataset configs are what tools/make_configs.py generates (other configs in configs/ are
written by hand and not covered here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _make_configs():
    spec = importlib.util.spec_from_file_location("make_configs", ROOT / "tools" / "make_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_configs_equal_what_make_configs_generates():
    generated = _make_configs().render()
    assert len(generated) == 14 and "msrvtt_umt.yaml" in generated and "ssv2_template_umt_l.yaml" in generated
    drifted = [name for name, text in generated.items()
               if not (ROOT / "configs" / name).is_file() or (ROOT / "configs" / name).read_text() != text]
    assert not drifted, f"configs/{drifted} differ from tools/make_configs.py: edit the script, then run it"


def test_generated_configs_carry_the_paper_schedule():
    """A check of the generator itself, on the values it exists to write."""
    generated = {name: yaml.safe_load(text) for name, text in _make_configs().render().items()}
    merging = generated["msrvtt_umt.yaml"]["trainer"]["callbacks"][0]["init_args"]
    assert merging == {"method": "vidtldr", "r": [600, 200, 100], "attention": "fused"}
    assert generated["msrvtt_umt_l.yaml"]["model"]["init_args"]["model"] == "umt_l16"
    # float(): PyYAML reads "2e-05" (no dot) as a string; jsonargparse reads it as the float it is
    assert float(generated["msrvtt_umt_l.yaml"]["model"]["init_args"]["lr"]) == 2e-5  # official L/16 MSRVTT
    for cfg in generated.values():
        assert cfg["data"]["init_args"]["num_frames"] == 12 and cfg["model"]["init_args"]["k_test"] == 128


def test_make_configs_writes_into_the_given_folder(tmp_path):
    _make_configs().main(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(_make_configs().render())
