"""UMT (Unmasked Teacher) backbones in the official checkpoint layout; importing it registers the presets."""
from .checkpoint import load_umt_checkpoint
from .model import UMT, UMTConfig
from .qa import UMTQA, UMTQAConfig, load_umt_qa_checkpoint
from .text import TextEncoderConfig, UMTTextEncoder
from .vision import VisionConfig, VisionTransformer

__all__ = [
    "UMT", "UMTQA", "TextEncoderConfig", "UMTConfig", "UMTQAConfig", "UMTTextEncoder", "VisionConfig",
    "VisionTransformer", "load_umt_checkpoint", "load_umt_qa_checkpoint",
]
