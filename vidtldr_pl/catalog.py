"""Names the command lines list in their ``--help`` without importing torch (tests/test_cli_fast.py checks them
against the method and schedule-family tables), and the model-name prefixes of foreign libraries."""
from __future__ import annotations

METHOD_NAMES = ("tome", "vidtldr", "random", "vidtldr_repshift", "random_drop", "saliency_drop", "repshift_drop",
                "topk", "evit", "sta", "frame_stride", "resize", "rlt", "stim_temporal",
                "tome_video", "pitome", "threshold")
FAMILY_NAMES = ("constant", "front", "delayed")
#: model names that build a transformers / timm / open_clip model (``vidtldr_pl.foreign.loading``), not a preset
FOREIGN_PREFIXES = ("hf:", "timm:", "open_clip:")

__all__ = ["FAMILY_NAMES", "FOREIGN_PREFIXES", "METHOD_NAMES"]
