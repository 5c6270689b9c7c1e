"""UMT (Unmasked Teacher) backbones in the official checkpoint layout."""
from .checkpoint import CheckpointError, LoadReport, load_umt_checkpoint, read_state_dict
from .model import UMT, UMT_CONFIGS, UMTConfig, create_umt
from .qa import QA_CONFIGS, UMTQA, UMTQAConfig, load_umt_qa_checkpoint
from .text import TextEncoderConfig, UMTTextEncoder
from .vision import VisionConfig, VisionEncoder, VisionTransformer

__all__ = [
    "QA_CONFIGS", "UMT", "UMTQA", "UMT_CONFIGS", "CheckpointError", "LoadReport", "TextEncoderConfig", "UMTConfig",
    "UMTQAConfig", "UMTTextEncoder", "VisionConfig", "VisionEncoder", "VisionTransformer", "create_umt",
    "load_umt_checkpoint", "load_umt_qa_checkpoint", "read_state_dict",
]
