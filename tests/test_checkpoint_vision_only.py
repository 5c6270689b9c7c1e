"""A vision-only UMT file (what UMT's vision_encoder module saves: encoder.* + pool_norm.*) into a whole UMT:
strict refuses it saying so and how to load the vision tower; strict=False loads the vision tower, logs what stays
random and returns / records the report."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from vidtldr_pl.backbones import create_model
from vidtldr_pl.backbones.checkpoint import CheckpointError
from vidtldr_pl.backbones.umt.checkpoint import load_umt_checkpoint


@pytest.fixture()
def vision_only_file(tmp_path):
    torch.manual_seed(1)
    source = create_model("umt_tiny")
    path = tmp_path / "vision_only.safetensors"
    save_file({k: v.contiguous() for k, v in source.vision_encoder.state_dict().items()}, str(path))
    return path, source


def test_strict_refuses_and_says_how(vision_only_file):
    path, source = vision_only_file
    with pytest.raises(CheckpointError) as info:
        create_model("umt_tiny", checkpoint=str(path))
    message = str(info.value)
    n_vision = len(source.vision_encoder.state_dict())
    assert f"holds only a UMT vision encoder ({n_vision} of {n_vision} vision tensors match)" in message
    assert "load_umt_checkpoint(model.vision_encoder, path)" in message and "strict=False" in message


def test_non_strict_logs_what_stays_random_and_records_the_report(vision_only_file, caplog):
    path, source = vision_only_file
    torch.manual_seed(2)
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl"):
        model = create_model("umt_tiny", checkpoint=str(path), strict=False)
    text_keys = sorted(k for k in model.state_dict() if not k.startswith("vision_encoder."))
    report = model.load_report
    assert report.loaded == len(source.vision_encoder.state_dict())
    assert report.missing == text_keys and not report.unexpected and not report.mismatched
    assert any("vision-only" in note for note in report.notes)
    for key, value in source.vision_encoder.state_dict().items():  # the vision tower is the file's
        assert torch.equal(model.vision_encoder.state_dict()[key], value), key
    assert not torch.equal(model.text_proj.weight, source.text_proj.weight)  # the rest stays as initialised
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert str(path) in message and f"{report.loaded} vision tensors loaded" in message
    n_text = sum(k.startswith("text_encoder.") for k in text_keys)
    for part in (f"text_encoder ({n_text} tensors)", "vision_proj (2 tensors)", "text_proj (2 tensors)",
                 "itm_head (2 tensors)", "temp (1 tensor)"):
        assert part in message, (part, message)


def test_vision_tower_alone_loads_strictly(vision_only_file):
    path, source = vision_only_file
    model = create_model("umt_tiny")
    report = load_umt_checkpoint(model.vision_encoder, path)
    assert report.ok and report.loaded == len(source.vision_encoder.state_dict())
