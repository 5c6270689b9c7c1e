"""Foreign models by name (``create_model("hf:<dir>" | "timm:<name>" | "open_clip:<name>")``): each comes back wrapped
as the tasks need it (VideoClassifier, DualEncoder / ZeroShotClassifier, per-frame image models), equal to the
library's own outputs with merging off, ready for ``apply_merge``; checkpoints load strictly and safely; every user
mistake is one line (a UserError)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vidtldr_pl.backbones import create_model, list_models
from vidtldr_pl.backbones.interfaces import DualEncoder, VideoClassifier, ZeroShotClassifier
from vidtldr_pl.errors import CheckpointError, UserError
from vidtldr_pl.foreign.loading import (
    ForeignConfigError, ForeignLibraryMissingError, ForeignModelNotFoundError, is_foreign_name,
)
from vidtldr_pl.foreign.wrappers import (
    FrameClassifier, FrameFeatures, HFCLIPDualEncoder, OpenCLIPDualEncoder, VideoClassifierWrapper, XCLIPZeroShot,
)
from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable, unpatch

transformers = pytest.importorskip("transformers")

R = [2, 2, 1]
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77)  # vocab_size 49408: CLIP's BPE (no tokenizer files needed)
CLIP_VISION = dict(SMALL, image_size=32, patch_size=8)


def _video(b: int = 2, t: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(b, 3, t, size, size, generator=torch.Generator().manual_seed(1))


def _saved(tmp_path, model: torch.nn.Module, name: str) -> str:
    model.save_pretrained(tmp_path / name)
    return f"hf:{tmp_path / name}"


def _check_merges_and_restores(wrapper: torch.nn.Module, call) -> None:
    """Merging changes the output and reduces the tokens; unpatch gives back the library's own classes."""
    ref = call()
    apply_merge(wrapper, MergeSetting(method="vidtldr", r=R))
    merged = call()
    state = find_mergeable(wrapper)[0].last_merge_state
    assert state is not None and len(state.tokens_per_layer) == len(R)
    assert state.tokens_per_layer[0] > state.tokens_per_layer[1] > state.tokens_per_layer[2]
    assert merged.shape == ref.shape and not torch.allclose(merged, ref)
    unpatch(wrapper)
    assert not find_mergeable(wrapper)
    assert not any(type(m).__name__.startswith(("Mergeable", "Merging")) for m in wrapper.modules())
    assert torch.equal(call(), ref)


# ------------------------------------------------------------------------------------------------ transformers
def test_hf_video_classifier_directory(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=7, **SMALL)
    name = _saved(tmp_path, transformers.VideoMAEForVideoClassification(cfg), "videomae")
    model = create_model(name).eval()
    assert isinstance(model, VideoClassifierWrapper) and isinstance(model, VideoClassifier)
    assert type(model.model).__name__ == "VideoMAEForVideoClassification"
    assert find_mergeable(model), "grafted at load: the tasks and EncoderStats see the encoder"
    video = _video()
    with torch.no_grad():
        own = model.model(pixel_values=video.transpose(1, 2)).logits  # the library's layout (B, T, 3, H, W)
        assert torch.equal(model(video), own)  # merging off: bit-identical
        _check_merges_and_restores(model, lambda: model(video))


def test_hf_clip_is_a_dual_encoder_and_zero_shot_classifier(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16)
    model = create_model(_saved(tmp_path, transformers.CLIPModel(cfg), "clip")).eval()
    assert isinstance(model, HFCLIPDualEncoder)
    assert isinstance(model, DualEncoder) and isinstance(model, ZeroShotClassifier)
    names = ["cat", "dog", "bird"]
    model.set_class_names(names, "a photo of a {}.")
    assert model.class_names == names and model.class_features.shape == (3, 16)
    frame = _video(t=1)
    ids, mask = model.tokenize([f"a photo of a {n}." for n in names])
    with torch.no_grad():  # one frame: the library's own CLIP logits
        own = model.model(input_ids=ids, attention_mask=mask, pixel_values=frame[:, :, 0]).logits_per_image
        torch.testing.assert_close(model(frame), own, rtol=1e-5, atol=1e-5)
        tokens, pooled = model.encode_vision(_video().transpose(1, 2))  # the retrieval layout (B, T, 3, H, W)
        assert tokens.shape == (2, 4, 16) and pooled.shape == (2, 16)
        assert torch.allclose(model.vision_embed(pooled).norm(dim=-1), torch.ones(2))
        assert model.text_embed(model.encode_text(ids, mask)).shape == (3, 16)
        assert math.isclose(float(model.temperature()), math.exp(-float(model.model.logit_scale)), rel_tol=1e-6)
        video = _video()
        _check_merges_and_restores(model, lambda: model(video))


def test_hf_xclip_zero_shot_equals_its_logits_per_video(tmp_path):
    torch.manual_seed(0)
    vision = dict(CLIP_VISION, num_frames=4, mit_hidden_size=32, mit_intermediate_size=64, mit_num_hidden_layers=1,
                  mit_num_attention_heads=2)
    cfg = transformers.XCLIPConfig(text_config=CLIP_TEXT, vision_config=vision, projection_dim=32, prompt_layers=1,
                                   prompt_attention_dropout=0.0, prompt_projection_dropout=0.0)
    model = create_model(_saved(tmp_path, transformers.XCLIPModel(cfg), "xclip")).eval()
    assert isinstance(model, XCLIPZeroShot) and isinstance(model, ZeroShotClassifier)
    model.set_class_names(["run", "jump"])
    video = _video()
    with torch.no_grad():
        own = model.model(input_ids=model.prompt_ids, attention_mask=model.prompt_mask,
                          pixel_values=video.transpose(1, 2)).logits_per_video
        assert torch.equal(model(video), own)
        assert model(video).shape == (2, 2)


def test_hf_image_models_run_per_frame(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(image_size=32, patch_size=8, num_labels=5, **SMALL)
    classifier = create_model(_saved(tmp_path, transformers.Dinov2ForImageClassification(cfg), "dino_cls")).eval()
    backbone = create_model(_saved(tmp_path, transformers.Dinov2Model(cfg), "dino")).eval()
    assert isinstance(classifier, FrameClassifier) and isinstance(backbone, FrameFeatures)
    video = _video()
    frames = video.transpose(1, 2).reshape(8, 3, 32, 32)
    with torch.no_grad():
        logits = classifier.model(pixel_values=frames).logits.reshape(2, 4, 5).mean(1)
        assert torch.equal(classifier(video), logits)
        pooled = backbone.model(pixel_values=frames).pooler_output.reshape(2, 4, 32).mean(1)
        assert torch.equal(backbone(video), pooled)
        _check_merges_and_restores(classifier, lambda: classifier(video))


def test_hf_directory_mistakes_are_one_line(tmp_path):
    with pytest.raises(ForeignModelNotFoundError, match="no such directory"):
        create_model(f"hf:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForeignConfigError, match="no config.json"):
        create_model(f"hf:{tmp_path / 'empty'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no_such_model_type"}))
    with pytest.raises(ForeignConfigError, match="config.json cannot be read"):
        create_model(f"hf:{bad}")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ForeignConfigError, match="config.json cannot be read") as err:
        create_model(f"hf:{bad}")
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)


def test_hf_directory_without_the_head_weights_is_refused(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=7, **SMALL)
    transformers.VideoMAEModel(cfg).save_pretrained(tmp_path / "backbone")
    config = json.loads((tmp_path / "backbone" / "config.json").read_text())
    config["architectures"] = ["VideoMAEForVideoClassification"]  # the head's weights are not in the folder
    (tmp_path / "backbone" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="stay random"):
        create_model(f"hf:{tmp_path / 'backbone'}")
    assert isinstance(create_model(f"hf:{tmp_path / 'backbone'}", strict=False), VideoClassifierWrapper)


# ------------------------------------------------------------------------------------------------ timm
TIMM = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)


def test_timm_classifier_and_checkpoints(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_model("timm:vit_tiny_patch16_224", num_classes=5, **TIMM).eval()
    assert isinstance(model, FrameClassifier) and type(model.model).__name__ == "MergeableVisionTransformer"
    video = _video()
    with torch.no_grad():
        own = model.model(video.transpose(1, 2).reshape(8, 3, 32, 32)).reshape(2, 4, 5).mean(1)
        assert torch.equal(model(video), own)
    unpatch(model)
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        loaded = create_model("timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / file), num_classes=5, **TIMM)
        assert loaded.load_report.ok and loaded.load_report.loaded == len(state)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(video), own)
    save_file({k: v for k, v in state.items() if not k.startswith("head.")}, str(tmp_path / "nohead.safetensors"))
    with pytest.raises(CheckpointError, match="missing in the file"):
        create_model("timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / "nohead.safetensors"), num_classes=5,
                     **TIMM)
    features = create_model("timm:vit_tiny_patch16_224", num_classes=0, **TIMM).eval()
    assert isinstance(features, FrameFeatures)
    with torch.no_grad():
        assert features(video).shape == (2, 32)
        _check_merges_and_restores(features, lambda: features(video))


def test_timm_mistakes_are_one_line(tmp_path):
    with pytest.raises(ForeignConfigError, match="unknown timm model.*did you mean vit_tiny_patch16_224"):
        create_model("timm:vit_tiny_patch16_22")
    with pytest.raises(CheckpointError, match="not found"):
        create_model("timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / "none.pth"), **TIMM)


def test_missing_library_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: no_timm(name))
    with pytest.raises(ForeignLibraryMissingError, match="timm: models need timm.*pip install timm") as err:
        create_model("timm:vit_tiny_patch16_224")
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ open_clip
OPEN_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16,
                                               mlp_ratio=2.0),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))


def test_open_clip_dual_encoder(tmp_path):
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = create_model("open_clip:ViT-B-16", **OPEN_CLIP).eval()
    assert isinstance(model, OpenCLIPDualEncoder) and isinstance(model, DualEncoder)
    assert isinstance(model, ZeroShotClassifier)
    names = ["cat", "dog", "bird"]
    model.set_class_names(names)
    video = _video()
    with torch.no_grad():
        image = model.model.encode_image(video.transpose(1, 2).reshape(8, 3, 32, 32)).reshape(2, 4, 16).mean(1)
        ids, _ = model.tokenize([f"a photo of a {n}." for n in names])
        text = F.normalize(model.model.encode_text(ids), dim=-1)
        own = model.model.logit_scale.exp() * F.normalize(image, dim=-1) @ text.t()
        torch.testing.assert_close(model(video), own, rtol=1e-5, atol=1e-5)
        _check_merges_and_restores(model, lambda: model(video))
    torch.save(model.model.state_dict(), tmp_path / "clip.pth")
    again = create_model("open_clip:ViT-B-16", checkpoint=str(tmp_path / "clip.pth"), **OPEN_CLIP).eval()
    again.set_class_names(names)
    with torch.no_grad():
        assert torch.equal(again(video), model(video))
    with pytest.raises(ForeignConfigError, match="unknown open_clip model.*did you mean ViT-B-16"):
        create_model("open_clip:ViT-B-1")


def test_an_unsupported_transformers_model_is_refused_at_load(tmp_path):
    from vidtldr_pl.foreign import UnsupportedModelError

    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=3, **SMALL)
    with pytest.raises(UnsupportedModelError, match="ViTForImageClassification is not a model") as err:
        create_model(_saved(tmp_path, transformers.ViTForImageClassification(cfg), "vit"))
    assert "\n" not in str(err.value) and "supported:" in str(err.value)


# ------------------------------------------------------------------------------------------------ names and docs
def test_docs_list_every_family_with_its_pooling():
    """docs/backbones.md's family table holds each registered adapter's name and ``pooling``, as written there."""
    from pathlib import Path

    from vidtldr_pl.foreign.core import _ADAPTERS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    assert doc.index("## Bring your own model") < doc.index("## Add a preset")
    for adapter in _ADAPTERS:
        assert f"| {adapter.name} | {adapter.pooling} |" in doc, adapter.__name__
    for prefix in ("hf:", "timm:", "open_clip:"):
        assert f"`{prefix}<" in doc


def test_prefixes_are_names_not_presets(tmp_path):
    assert all(is_foreign_name(n) for n in ("hf:/x", "timm:vit", "open_clip:ViT-B-16"))
    assert not is_foreign_name("videomae_b16")
    assert not any(is_foreign_name(n) for n in list_models())  # list_models: our presets only


def test_a_task_builds_a_foreign_name(tmp_path):
    from vidtldr_pl.tasks import ClassificationTask

    torch.manual_seed(0)
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=7, **SMALL)
    name = _saved(tmp_path, transformers.VideoMAEForVideoClassification(cfg), "videomae")
    task = ClassificationTask(model=name)
    assert isinstance(task.model, VideoClassifierWrapper) and task.hparams.model == name
    video = _video()
    with torch.no_grad():
        assert task(video.transpose(1, 2)).shape == (2, 7)  # the task's layout (B, T, 3, H, W)


def test_layer_decay_finds_the_blocks_of_a_transformers_model():
    """Layer-wise lr decay groups a grafted encoder's blocks by membership (transformers calls them encoder.layer.i):
    each block its own scale, as for our presets."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from vidtldr_pl.foreign import adapt
    from vidtldr_pl.tasks.optim import layer_decay_groups

    model = VideoMAEForVideoClassification(VideoMAEConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=16, num_frames=4, tubelet_size=2, num_labels=3))
    encoder = adapt(model)[0]
    groups = layer_decay_groups(model, encoder, weight_decay=0.05, layer_decay=0.75)
    scales = {g["layer_id"]: g["lr_scale"] for g in groups}
    assert {1, 2, 3} <= set(scales) and len({scales[i] for i in (1, 2, 3)}) == 3
    for i, block in enumerate(encoder.blocks, start=1):
        names = {n for g in groups if g["layer_id"] == i for n in g["names"]}
        assert names and all(f"layer.{i - 1}." in n for n in names)
