"""Backbones on shared ViT layers, built by name: ``create_model("umt_b16")``, ``list_models()``."""
from .checkpoint import CheckpointError, LoadReport, read_state_dict
from .layers import ViTConfig, ViTEncoder
from .registry import PretrainedCfg, create_model, list_models, model_entry, pretrained_cfg, register_model

__all__ = [
    "CheckpointError", "LoadReport", "PretrainedCfg", "ViTConfig", "ViTEncoder", "create_model", "list_models",
    "model_entry", "pretrained_cfg", "read_state_dict", "register_model",
]
