"""UMT (Unmasked Teacher) backbones in the official checkpoint layout."""
from .checkpoint import CheckpointError, LoadReport, load_umt_checkpoint, read_state_dict
from .model import UMT, UMT_CONFIGS, UMTConfig, create_umt
from .text import TextEncoderConfig, UMTTextEncoder
from .vision import VisionConfig, VisionEncoder, VisionTransformer

__all__ = [
    "UMT", "UMT_CONFIGS", "CheckpointError", "LoadReport", "TextEncoderConfig", "UMTConfig", "UMTTextEncoder",
    "VisionConfig", "VisionEncoder", "VisionTransformer", "create_umt", "load_umt_checkpoint", "read_state_dict",
]
