"""Loading checkpoints in the official layouts; every bad file fails with a message naming the file and keys."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vidtldr_pl.backbones import create_model
from vidtldr_pl.backbones.umt import load_umt_checkpoint
from vidtldr_pl.errors import CheckpointError
from vidtldr_pl.backbones.umt.vision import VisionTransformer


@pytest.fixture(scope="module")
def tiny_state():
    return create_model("umt_tiny").state_dict()


def _official_finetuned(path, state):
    torch.save({"model": state, "optimizer": {}, "epoch": 3, "global_step": 100}, path)


def _equal(model, state):
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def test_finetuned_layout_loads_exactly(tmp_path, tiny_state):
    _official_finetuned(tmp_path / "ft.pth", tiny_state)
    model = create_model("umt_tiny")
    assert not _equal(model, tiny_state)  # fresh random init differs
    report = load_umt_checkpoint(model, tmp_path / "ft.pth")
    assert report.ok and report.loaded == len(tiny_state)
    assert _equal(model, tiny_state)


def test_safetensors_and_ddp_prefix(tmp_path, tiny_state):
    save_file({f"module.{k}": v.contiguous() for k, v in tiny_state.items()}, str(tmp_path / "m.safetensors"))
    model = create_model("umt_tiny", checkpoint=str(tmp_path / "m.safetensors"))
    assert _equal(model, tiny_state)


def test_pretraining_layout_loads_into_retrieval_model(tmp_path, tiny_state):
    pre = {}
    for k, v in tiny_state.items():
        pre[k.replace("text_encoder.", "text_encoder.bert.", 1) if k.startswith("text_encoder.") else k] = v
    pre["text_encoder.cls.predictions.bias"] = torch.zeros(128)
    pre["vision_encoder.clip_decoder.0.head.weight"] = torch.zeros(8, 64)
    pre["clip_teacher.proj"] = torch.zeros(3)
    torch.save({"model": pre}, tmp_path / "pre.pth")
    model = create_model("umt_tiny")
    report = load_umt_checkpoint(model, tmp_path / "pre.pth")
    assert report.renamed_bert and len(report.ignored) == 3
    assert _equal(model, tiny_state)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_wrong_checkpoint_fails_with_report(tmp_path, tiny_state, damage):
    state = dict(tiny_state)
    if damage == "missing":
        del state["vision_encoder.encoder.blocks.1.attn.q_bias"]
        needle = "missing in the file (1): vision_encoder.encoder.blocks.1.attn.q_bias"
    elif damage == "extra":
        state["vision_encoder.encoder.blocks.9.attn.q_bias"] = torch.zeros(64)
        needle = "unexpected in the file (1): vision_encoder.encoder.blocks.9.attn.q_bias"
    else:
        state["vision_proj.weight"] = torch.zeros(16, 64)
        needle = "vision_proj.weight file [16, 64] vs model [32, 64]"
    _official_finetuned(tmp_path / "bad.pth", state)
    model = create_model("umt_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_umt_checkpoint(model, tmp_path / "bad.pth")
    assert needle in str(err.value) and "bad.pth" in str(err.value)
    assert _equal(model, before)  # nothing was loaded


def test_non_state_dict_files_fail_clearly(tmp_path):
    model = create_model("umt_tiny")
    torch.save({"model": {"a": 1}}, tmp_path / "obj.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    for name, needle in [("obj.pth", "not a state dict"), ("text.pth", "not a PyTorch checkpoint"), ("list.pth", "does not contain a state dict")]:
        with pytest.raises(CheckpointError, match=needle) as err:
            load_umt_checkpoint(model, tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_umt_checkpoint(model, tmp_path / "nope.pth")


class Config(dict):
    """Stands in for the official config object (an EasyDict) saved beside the weights."""


def test_unsafe_pickle_is_refused(tmp_path, tiny_state):
    torch.save({"model": tiny_state, "config": Config(lr=1)}, tmp_path / "cfg.pth")
    with pytest.raises(CheckpointError, match="convert --trust"):
        load_umt_checkpoint(create_model("umt_tiny"), tmp_path / "cfg.pth")


@pytest.mark.parametrize("name,key", [("umt_b16", "umt_b16_retrieval_finetuned_full"), ("umt_l16", "umt_l16_retrieval_finetuned_full")])
def test_presets_match_official_layout(reference_dir, name, key):
    manifest = json.loads((reference_dir / "umt_state_dict_keys.json").read_text())
    with torch.device("meta"):
        model = create_model(name)
    state = model.state_dict()
    assert set(state) == set(manifest[key])
    for k, v in state.items():
        assert list(v.shape) == manifest[key][k]["shape"], k
    summary = manifest[f"_summary_{name[4:]}"]
    assert sum(p.numel() for p in model.parameters()) == summary["n_params_full"]
    assert sum(p.numel() for p in model.vision_encoder.parameters()) == summary["n_params_vision"]
    extra = manifest[f"umt_{name[4:]}_pretrain_student_full_extra_keys"]
    assert all(k.startswith(("text_encoder.bert.", "text_encoder.cls.", "vision_encoder.clip_decoder.")) for k in extra)


def test_umt_b16_official_layout_token_schedule(tmp_path, reference_dir):
    """UMT-B/16 given weights in the official layout, 12 frames at 224 px, r = [600, 200, 100, 0, ...]."""
    from vidtldr_pl.merging import patch

    manifest = json.loads((reference_dir / "umt_state_dict_keys.json").read_text())["umt_b16_vision_encoder_module"]
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v["shape"], generator=g) * 0.02 for k, v in manifest.items()}
    save_file({f"vision_encoder.{k}": v for k, v in state.items()}, str(tmp_path / "umt_b16_vision.safetensors"))
    model = create_model("umt_b16").vision_encoder
    assert isinstance(model, VisionTransformer)
    load_umt_checkpoint(model, tmp_path / "umt_b16_vision.safetensors")
    patch(model, "vidtldr", r=[600, 200, 100])
    video = torch.randn(1, 3, 12, 224, 224, generator=g)
    with torch.no_grad():
        tokens, pooled, merge_state = model(video, return_state=True)
    assert merge_state.tokens_per_layer[:4] == [1752, 1552, 1452, 1452]
    assert merge_state.tokens_per_layer[-1] == 1452 and tokens.shape == (1, 1452, 768) and pooled.shape == (1, 768)
