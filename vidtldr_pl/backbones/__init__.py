"""Backbones on shared ViT layers, built by name: ``create_model("umt_b16")``, ``list_models()``.

The registry imports no family; importing the families below registers their presets (decorated functions).
"""
from .checkpoint import LoadReport, read_state_dict
from .layers import ViTConfig, ViTEncoder
from .registry import PretrainedCfg, create_model, list_models, model_entry, pretrained_cfg, register_model

from . import umt, videomae, vificlip  # noqa: F401, E402  registers the presets

__all__ = [
    "LoadReport", "PretrainedCfg", "ViTConfig", "ViTEncoder", "create_model", "list_models", "model_entry",
    "pretrained_cfg", "read_state_dict", "register_model",
]
