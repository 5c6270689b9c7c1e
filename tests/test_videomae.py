"""VideoMAE v1 equals transformers' VideoMAEForVideoClassification on the same random weights, from HF-layout,
hub-style (q_bias / v_bias) and original-layout files; losing the q / v biases fails."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vidtldr_pl.backbones import create_model, pretrained_cfg
from vidtldr_pl.backbones.videomae import to_videomae_layout
from vidtldr_pl.errors import CheckpointError

transformers = pytest.importorskip("transformers")  # in the test extra; the library itself never imports it

# a ViT-B/16-shaped VideoMAE at a small input (the key layout and every operation are those of videomae_b16)
OVERRIDES = {"img_size": 64, "num_frames": 4, "depth": 3, "num_classes": 7}


@pytest.fixture(scope="module")
def hf_model():
    cfg = transformers.VideoMAEConfig(
        image_size=64, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=768,
        num_hidden_layers=3, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu", num_labels=7,
        use_mean_pooling=True, qkv_bias=True,
    )
    torch.manual_seed(0)
    model = transformers.VideoMAEForVideoClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # every weight random and non-zero, the q / v biases included
            is_norm_weight = ("layernorm" in name or "fc_norm" in name) and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.02 if p.ndim > 1 else 0.1) + (1.0 if is_norm_weight else 0.0))
    return model


@pytest.fixture(scope="module")
def video():
    torch.manual_seed(1)
    return torch.randn(2, 3, 4, 64, 64)  # (B, 3, T, H, W), normalised


@pytest.fixture(scope="module")
def hf_logits(hf_model, video):
    with torch.no_grad():
        return hf_model(pixel_values=video.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)


def _hf_state(hf_model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in hf_model.state_dict().items()}


def _ours(path, **kw) -> torch.nn.Module:
    return create_model("videomae_b16", checkpoint=str(path), **{**OVERRIDES, **kw}).eval()


def test_hf_layout_file_gives_transformers_logits(tmp_path, hf_model, video, hf_logits):
    state = _hf_state(hf_model)
    assert any(k.endswith("attention.attention.query.bias") for k in state)  # this release's names
    save_file(state, tmp_path / "hf.safetensors")
    model = _ours(tmp_path / "hf.safetensors")
    with torch.no_grad():
        ours = model(video)
    assert (ours - hf_logits).abs().max().item() < 1e-4
    q_hf = state["videomae.encoder.layer.1.attention.attention.query.bias"]
    assert torch.equal(model.encoder.blocks[1].attn.q_bias, q_hf) and q_hf.abs().sum() > 0


def test_hub_style_q_v_bias_names_map_too(tmp_path, hf_model, video, hf_logits):
    """Files on the hub store the biases as q_bias / v_bias (some transformers releases drop them on load)."""
    state = {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
              .replace("attention.attention.value.bias", "attention.attention.v_bias"): v
             for k, v in _hf_state(hf_model).items()}
    torch.save(state, tmp_path / "hub.bin")
    with torch.no_grad():
        ours = _ours(tmp_path / "hub.bin")(video)
    assert (ours - hf_logits).abs().max().item() < 1e-4


def _original_layout(hf_model) -> dict[str, torch.Tensor]:
    ours, notes = to_videomae_layout(_hf_state(hf_model))
    assert not notes
    return {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in ours.items()}


def test_original_layout_file_gives_identical_logits(tmp_path, hf_model, video):
    original = _original_layout(hf_model)
    assert "blocks.0.attn.q_bias" in original and "head.weight" in original and "pos_embed" not in original
    torch.save({"model": original, "epoch": 3}, tmp_path / "orig.pth")  # the original fine-tuning container
    torch.save({"module": original}, tmp_path / "ds.pth")  # the DeepSpeed one
    save_file(_hf_state(hf_model), tmp_path / "hf.safetensors")
    with torch.no_grad():
        a = _ours(tmp_path / "orig.pth")(video)
        b = _ours(tmp_path / "ds.pth")(video)
        c = _ours(tmp_path / "hf.safetensors")(video)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_lost_q_v_biases_fail_the_strict_load(tmp_path, hf_model, video, hf_logits):
    state = {k: v for k, v in _hf_state(hf_model).items() if not k.endswith(("query.bias", "value.bias"))}
    save_file(state, tmp_path / "nobias.safetensors")
    with pytest.raises(CheckpointError, match="q_bias"):
        _ours(tmp_path / "nobias.safetensors")
    # and the biases matter: zeroing them changes the logits beyond the tolerance
    full = _hf_state(hf_model)
    zeroed = {k: (torch.zeros_like(v) if k.endswith(("query.bias", "value.bias")) else v) for k, v in full.items()}
    save_file(zeroed, tmp_path / "zero.safetensors")
    with torch.no_grad():
        wrong = _ours(tmp_path / "zero.safetensors")(video)
    assert (wrong - hf_logits).abs().max().item() > 1e-2


def test_wrong_shapes_and_foreign_files_are_refused(tmp_path, hf_model):
    save_file(_hf_state(hf_model), tmp_path / "hf.safetensors")
    with pytest.raises(CheckpointError, match="wrong shape"):
        create_model("videomae_b16", checkpoint=str(tmp_path / "hf.safetensors"), **{**OVERRIDES, "num_classes": 400})
    torch.save({"model": {"text_encoder.x": torch.zeros(2)}}, tmp_path / "umt.pth")
    with pytest.raises(CheckpointError, match="missing"):
        create_model("videomae_b16", checkpoint=str(tmp_path / "umt.pth"), **OVERRIDES)


def test_presets_and_pretrained_cfg():
    with torch.device("meta"):
        b, l16 = create_model("videomae_b16"), create_model("videomae_l16")
    assert b.encoder.num_tokens == 1568 and b.encoder.num_prefix_tokens == 0 and b.head.out_features == 400
    assert l16.encoder.cfg.embed_dim == 1024 and len(l16.encoder.blocks) == 24
    assert "pos_embed" not in dict(b.state_dict()) and not any("gamma" in k for k in b.state_dict())
    cfg = pretrained_cfg("videomae_b16")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)  # ImageNet, not HF's 0.5
    assert (cfg.num_frames, cfg.img_size, cfg.task) == (16, 224, "classification")


def test_size_weighted_pool_is_an_option(video):
    from vidtldr_pl.merging import MergeSetting, apply_merge

    torch.manual_seed(0)
    plain = create_model("videomae_b16", **OVERRIDES).eval()
    weighted = create_model("videomae_b16", size_weighted_pool=True, **OVERRIDES).eval()
    weighted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(video), weighted(video))  # no merge: sizes all one, same pooling
        for m in (plain, weighted):
            apply_merge(m, MergeSetting(method="tome", r=[8, 4]))
        assert not torch.allclose(plain(video), weighted(video))
