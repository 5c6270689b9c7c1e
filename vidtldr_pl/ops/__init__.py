"""Attention kernels: the explicit reference and the fused path."""
from .attention import ATTENTION_MODES, attention

__all__ = ["ATTENTION_MODES", "attention"]
