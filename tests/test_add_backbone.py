"""Adding a backbone touches ONE file: a frame-wise timm ViT as a new preset.

``BACKBONE_FILE`` below is everything a user writes (files touched: 1, a new one; no registry, family, task or
ViFi-CLIP file is edited): a model class on the shared frame-wise encoder (``backbones/framewise.py``), a loader that
maps timm's keys onto ours, and one decorated preset function. The test writes it into a package of its own, imports
it, and checks that ``create_model`` / ``list_models`` know the preset, that merging reduces its tokens, that the
whole backbone contract holds (merge checks and the declared ``VideoClassifier`` interface), and that with merging
off its outputs equal timm's own per frame (within 1e-5).
"""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from backbone_contract import CHECKS
from vidtldr_pl.backbones import create_model, list_models, pretrained_cfg
from vidtldr_pl.backbones import registry
from vidtldr_pl.merging import MergeSetting, apply_merge, unpatch

timm = pytest.importorskip("timm")

NAME = "timm_frame_vit_tiny"
BACKBONE_FILE = '''
"""A timm image ViT run on every frame of a video, as a vidtldr_pl backbone (one file)."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vidtldr_pl.backbones import read_state_dict, register_model
from vidtldr_pl.backbones.checkpoint import LoadReport, load_state_into
from vidtldr_pl.backbones.framewise import FrameViTEncoder, per_video
from vidtldr_pl.backbones.interfaces import VideoClassifier
from vidtldr_pl.backbones.layers import ViTConfig


class FrameViTClassifier(nn.Module):
    """timm's VisionTransformer (CLS pooling) per frame; video logits = the mean of the frames' logits."""

    implements = (VideoClassifier,)

    def __init__(self, cfg: ViTConfig, num_frames: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = FrameViTEncoder(cfg, num_frames)
        self.head = nn.Linear(cfg.embed_dim, num_classes)

    def forward(self, video: Tensor) -> Tensor:
        """video (B, 3, T, H, W) -> logits (B, num_classes)."""
        tokens = self.encoder(video)  # (B x T, N', D), CLS first
        return per_video(self.head(tokens[:, 0]), video.shape[0]).mean(dim=1)


def load_timm_vit(model: nn.Module, path: str, strict: bool = True) -> LoadReport:
    """A timm VisionTransformer state dict -> ours: the same block names; the patch conv gains a time axis."""
    state = {}
    for key, value in read_state_dict(path).items():
        if key == "patch_embed.proj.weight":
            value = value.unsqueeze(2)
        state[key if key.startswith("head.") else "encoder." + key] = value
    return load_state_into(model, state, path, strict)


@register_model(loader=load_timm_vit, num_frames=4, img_size=32, task="classification",
                description="timm VisionTransformer (32 px, patch 8, 2 x 32) per frame, CLS pooled")
def timm_frame_vit_tiny(num_frames: int, num_classes: int = 5, **overrides: Any) -> FrameViTClassifier:
    cfg = ViTConfig(**{"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8, "num_frames": 1,
                       "class_token": True, "pos_embed": "learned", "qkv_bias": "qkv", **overrides})
    return FrameViTClassifier(cfg, num_frames, num_classes)
'''


@pytest.fixture(scope="module")
def timm_backbone(tmp_path_factory):
    """Import the user's one file from a package of its own (registers the preset); unregistered afterwards."""
    root = tmp_path_factory.mktemp("user_code")
    (root / "my_backbones").mkdir()
    (root / "my_backbones" / "__init__.py").write_text("")
    (root / "my_backbones" / "timm_frame_vit.py").write_text(textwrap.dedent(BACKBONE_FILE))
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("my_backbones.timm_frame_vit")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("my_backbones")]:
            del sys.modules[name]
        registry._REGISTRY.pop(NAME, None)  # other tests see the shipped presets only


@pytest.fixture(scope="module")
def timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    with torch.no_grad():  # random biases / norms / CLS / positions too, so that every parameter matters
        for p in vit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return vit


def test_the_preset_is_registered_by_its_one_file(timm_backbone):
    assert NAME in list_models() and NAME in list_models("timm_*", task="classification")
    cfg = pretrained_cfg(NAME)
    assert (cfg.num_frames, cfg.img_size) == (4, 32)
    model = create_model(NAME)
    assert model.encoder.example_input(2).shape == (2, 3, 4, 32, 32) and model.encoder.num_tokens == 17


def test_unmerged_outputs_equal_timm_per_frame(timm_backbone, timm_vit, tmp_path):
    torch.save(timm_vit.state_dict(), tmp_path / "timm_vit.pth")
    model = create_model(NAME, checkpoint=str(tmp_path / "timm_vit.pth")).eval()  # strict: every key, every shape
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    frames = video.transpose(1, 2).reshape(8, 3, 32, 32)
    with torch.no_grad():
        ours = model.encoder(video)
        ref = timm_vit.forward_features(frames)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(video), timm_vit(frames).reshape(2, 4, -1).mean(dim=1), atol=1e-5, rtol=0)


def test_merging_reduces_its_tokens(timm_backbone):
    model = create_model(NAME).eval()
    video = model.encoder.example_input(2)
    counts = apply_merge(model, MergeSetting(method="vidtldr", r=4))[0]
    state = model.encoder.new_merge_state()
    with torch.no_grad():
        merged = model.encoder(video, state)
    unpatch(model)
    assert state.tokens_per_layer == counts == [13, 9] and merged.shape == (8, 9, 32)  # per frame, CLS kept


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_it_passes_the_backbone_contract(timm_backbone, check):
    torch.manual_seed(0)
    model = create_model(NAME)
    for p in model.parameters():
        with torch.no_grad():
            p.add_(0.02 * torch.randn_like(p))
    CHECKS[check](model)
