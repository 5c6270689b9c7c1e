"""Strict refusals say how many tensors matched (``K of M``), and name the layout they recognised; a vision-only UMT
file is recognised whatever the container (.pth with {"model": ...}, a pretraining file with clip_decoder.*, a
whole-model file that kept only vision_encoder.*)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vidtldr_pl.backbones import create_model
from vidtldr_pl.backbones.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def umt():
    torch.manual_seed(0)
    return create_model("umt_tiny")


def test_strict_refusal_counts_the_tensors_that_match(umt, tmp_path):
    state = dict(umt.state_dict())
    total = len(state)
    state.pop("temp")
    path = tmp_path / "minus_one.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        create_model("umt_tiny", checkpoint=str(path))
    message = str(info.value)
    assert f"{total - 1} of {total} tensors match (layout: whole UMT (vision and text towers))" in message
    assert "missing in the file (1): temp" in message


def test_wrong_shape_counts_as_not_matching(umt, tmp_path):
    state = {k: v.clone() for k, v in umt.state_dict().items()}
    total = len(state)
    key = next(k for k in state if k.endswith("proj.weight"))
    state[key] = torch.zeros(3, 3)
    path = tmp_path / "bad_shape.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match=rf"{total - 1} of {total} tensors match"):
        create_model("umt_tiny", checkpoint=str(path))


@pytest.mark.parametrize("container", ["model_dict_pth", "pretraining_pth", "prefixed_pth", "safetensors"])
def test_vision_only_file_is_named_whatever_the_container(umt, tmp_path, container):
    vision = {k: v.contiguous() for k, v in umt.vision_encoder.state_dict().items()}
    path = tmp_path / f"{container}.{'safetensors' if container == 'safetensors' else 'pth'}"
    if container == "model_dict_pth":
        torch.save({"model": vision, "epoch": 3}, path)
    elif container == "pretraining_pth":
        torch.save({"model": {**vision, "clip_decoder.0.head.weight": torch.zeros(4, 4)}}, path)
    elif container == "prefixed_pth":
        torch.save({f"vision_encoder.{k}": v for k, v in vision.items()}, path)
    else:
        save_file(vision, str(path))
    with pytest.raises(CheckpointError) as info:
        create_model("umt_tiny", checkpoint=str(path))
    n = len(vision)
    assert f"holds only a UMT vision encoder ({n} of {n} vision tensors match)" in str(info.value)
    assert "load_umt_checkpoint(model.vision_encoder, path)" in str(info.value)
    # and the vision tower alone takes it strictly
    from vidtldr_pl.backbones.umt.checkpoint import load_umt_checkpoint

    target = create_model("umt_tiny")
    report = load_umt_checkpoint(target.vision_encoder, path)
    assert report.ok and report.loaded == n
    assert all(torch.equal(a, b) for a, b in zip(target.vision_encoder.state_dict().values(), vision.values()))


def test_classifier_checkpoint_into_a_retrieval_model_says_so(tmp_path):
    path = tmp_path / "k400.pth"
    torch.save({"module": {"patch_embed.proj.weight": torch.zeros(2), "blocks.0.norm1.weight": torch.zeros(2),
                           "head.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError) as info:
        create_model("umt_tiny", checkpoint=str(path))
    message = str(info.value)
    assert "0 of " in message and "single-modality ViT classifier" in message
    assert "use it with a classification preset" in message
