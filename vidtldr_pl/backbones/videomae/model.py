"""VideoMAE v1 classifier: what a backbone provides, in one file (a model, a checkpoint converter, its presets).

Architecture (MCG-NJU/VideoMAE ``modeling_finetune.py``): Conv3d tubelet 2 x 16 x 16 -> 8 x 14 x 14 = 1568 tokens
(time-major), no CLS, a fixed 1-D sin-cos table (not in state dicts), pre-LN blocks (eps 1e-6) with q / v biases
and exact GELU, no layer scale in the fine-tuned checkpoints, ``fc_norm`` over the mean of the tokens, a linear head.

Merging options and their defaults (the reference each default reproduces):
- proportional attention: a merge-method option (``method_options: {proportional_attention: false}``); default on,
  as vid-TLDR always adds log(size). VHDYTM's ToMe-on-VideoMAE runs and ToMe's MAE patch use it off.
- ``size_weighted_pool``: pool with sum(s_i x_i) / sum(s_i) instead of the plain mean; default off, as VideoMAE,
  VHDYTM, RLT and vid-TLDR pool (ToMe's MAE patch weights by size).

Checkpoints: the original fine-tuned files (state under ``model`` or ``module``, keys ``patch_embed.*``, ``blocks.*``,
``fc_norm.*``, ``head.*``; their pickled ``args`` need the one-time convert path) and HF
``VideoMAEForVideoClassification`` state dicts (``videomae.*``, ``classifier.*``; q / v biases as ``q_bias`` /
``v_bias`` or as ``query.bias`` / ``value.bias`` depending on the transformers release: both map, and a file that
has neither fails the strict load instead of leaving zero biases). Inputs are normalised with the ImageNet mean /
std, which the original test transforms use (HF's processor defaults to 0.5: always pass them explicitly).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...merging import MergeState
from ..checkpoint import LoadReport, load_state_into, read_state_dict, strip_prefix
from ..interfaces import VideoClassifier
from ..layers import ViTConfig, ViTEncoder, init_vit_weights
from ..registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VideoMAEConfig:
    """vit: the encoder (no final norm: ``fc_norm`` follows the mean); num_classes: head outputs (400 for K400,
    174 for SSv2); fc_drop: dropout before the head; size_weighted_pool: see the module docstring."""

    vit: ViTConfig = field(default_factory=lambda: ViTConfig(tubelet_size=2, num_frames=16, final_norm=False))
    num_classes: int = 400
    fc_drop: float = 0.0
    size_weighted_pool: bool = False


class VideoMAE(nn.Module):
    """VideoMAE classifier. video: (B, 3, T, H, W) normalised with the ImageNet mean / std -> logits (B, classes)."""

    implements = (VideoClassifier,)

    def __init__(self, cfg: VideoMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg.vit)
        self.fc_norm = nn.LayerNorm(cfg.vit.embed_dim, eps=1e-6)
        self.fc_dropout = nn.Dropout(cfg.fc_drop)
        self.head = nn.Linear(cfg.vit.embed_dim, cfg.num_classes)
        self.apply(init_vit_weights)

    def pool(self, tokens: Tensor, state: MergeState) -> Tensor:
        """tokens (B, N', D) -> (B, D): the plain mean, or the size-weighted one (``size_weighted_pool``), over each
        video's real tokens (``MergeState.mean_pool``: padding of rows of different counts left out)."""
        return state.mean_pool(tokens, size_weighted=self.cfg.size_weighted_pool)

    def forward_features(self, video: Tensor, state: MergeState | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> pooled, normalised features (B, D)."""
        state = state if state is not None else self.encoder.new_merge_state()
        return self.fc_norm(self.pool(self.encoder(video, state), state))

    def forward(self, video: Tensor) -> Tensor:
        """video: (B, 3, T, H, W) -> logits (B, num_classes)."""
        return self.head(self.fc_dropout(self.forward_features(video)))

    def forward_pooled(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video: (B, 3, T, H, W) -> (logits (B, num_classes), the pooled features the head reads (B, D))."""
        features = self.forward_features(video)
        return self.head(self.fc_dropout(features)), features


# ---------------------------------------------------------------------------------------------- checkpoint layouts
_HF_BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "attention.attention.q_bias": "attn.q_bias", "attention.attention.v_bias": "attn.v_bias",
    "attention.attention.query.bias": "attn.q_bias", "attention.attention.value.bias": "attn.v_bias",
}


def _from_hf(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """HF VideoMAEForVideoClassification keys -> ours; returns (state, notes). q / k / v weights are concatenated."""
    out: dict[str, Tensor] = {}
    notes: list[str] = []
    qkv: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith("videomae.embeddings.patch_embeddings.projection."):
            out["encoder.patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("videomae.encoder.layer."):
            rest = key[len("videomae.encoder.layer."):]
            index, sub = rest.split(".", 1)
            part = sub.rsplit(".", 1)
            if part[0] in ("attention.attention.query", "attention.attention.key", "attention.attention.value") \
                    and part[1] == "weight":
                qkv.setdefault(int(index), {})[part[0].rsplit(".", 1)[1]] = value
                continue
            if sub == "attention.attention.key.bias":
                if value.abs().max() > 0:
                    notes.append(f"{key} is not zero: VideoMAE has no key bias, it is dropped")
                continue
            target = _HF_BLOCK.get(sub) or _HF_BLOCK.get(part[0])
            if target is None:
                out[key] = value  # reported as unexpected by the strict load
            elif sub in _HF_BLOCK:
                out[f"encoder.blocks.{index}.{target}"] = value
            else:
                out[f"encoder.blocks.{index}.{target}.{part[1]}"] = value
        elif key.startswith("classifier."):
            out["head." + key.split(".", 1)[1]] = value
        elif key.startswith("videomae.layernorm."):
            out["encoder.norm." + key.rsplit(".", 1)[1]] = value
        else:
            out[key] = value  # fc_norm.* keep their names; anything else is reported
    for index, parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            notes.append(f"layer {index}: attention {missing} weights missing")
            continue
        out[f"encoder.blocks.{index}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out, notes


def to_videomae_layout(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Any supported layout (ours, original, HF; ``module.`` / ``backbone.`` / ``encoder.`` prefixes) -> ours."""
    for prefix in ("module.", "backbone."):
        state = strip_prefix(state, prefix)
    if any(k.startswith("videomae.") for k in state):
        return _from_hf(state)
    if any(k.startswith("encoder.patch_embed.") for k in state):
        return dict(state), []  # ours
    out = {}
    for key, value in state.items():
        if key.startswith(("patch_embed.", "blocks.", "norm.")):
            out["encoder." + key] = value
        else:
            out[key] = value
    return out, []


def load_videomae_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an original, HF or our VideoMAE checkpoint into ``model`` (strict: keys and shapes must match)."""
    state, notes = to_videomae_layout(read_state_dict(path))
    report = LoadReport(path=str(path), notes=notes)
    return load_state_into(model, state, str(path), strict, report=report)


# ------------------------------------------------------------------------------------------------------ presets
_HEAD_FIELDS = {"num_classes", "fc_drop", "size_weighted_pool"}


def _config(vit: dict[str, Any], **overrides: Any) -> VideoMAEConfig:
    """overrides: VideoMAEConfig head fields (num_classes, fc_drop, size_weighted_pool), the rest ViTConfig fields."""
    head = {k: overrides.pop(k) for k in list(overrides) if k in _HEAD_FIELDS}
    return VideoMAEConfig(vit=ViTConfig(**{"tubelet_size": 2, "final_norm": False, **vit, **overrides}), **head)


_CLASSIFIER = dict(loader=load_videomae_checkpoint, mean=IMAGENET_MEAN, std=IMAGENET_STD, task="classification")


@register_model(num_frames=16, img_size=224, **_CLASSIFIER,
                description="VideoMAE v1 ViT-B/16 classifier (16 frames, tubelet 2, 1568 tokens, no CLS)")
def videomae_b16(**overrides: Any) -> VideoMAE:
    return VideoMAE(_config({}, **overrides))


@register_model(num_frames=16, img_size=224, **_CLASSIFIER,
                description="VideoMAE v1 ViT-L/16 classifier (16 frames, tubelet 2, 1568 tokens, no CLS)")
def videomae_l16(**overrides: Any) -> VideoMAE:
    return VideoMAE(_config({"embed_dim": 1024, "depth": 24, "num_heads": 16}, **overrides))


@register_model(num_frames=4, img_size=64, **_CLASSIFIER, description="a tiny VideoMAE-style classifier, for tests")
def videomae_tiny(**overrides: Any) -> VideoMAE:
    return VideoMAE(_config({"embed_dim": 64, "depth": 4, "num_heads": 4}, **{"num_classes": 10, **overrides}))


# the embedded action demo (configs/demo_videomae.yaml): 4 x 6 x 6 = 144 tokens, 12 synthetic action classes;
# README "The action demo" says how its weights were trained
@register_model(num_frames=8, img_size=96, **_CLASSIFIER,
                builtin_weights={"videomae_demo_synthetic": "videomae_demo_synthetic.safetensors"},
                description="the embedded action demo classifier (6 x 192, 8 frames at 96 px, 12 classes); weights "
                            "builtin:videomae_demo_synthetic")
def videomae_demo(**overrides: Any) -> VideoMAE:
    return VideoMAE(_config({"embed_dim": 192, "depth": 6, "num_heads": 3}, **{"num_classes": 12, **overrides}))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VideoMAE", "VideoMAEConfig", "load_videomae_checkpoint",
           "to_videomae_layout"]
