"""Lightning callbacks: token merging and encoder measurements."""
from .measure import EncoderStats
from .vidtldr import TokenMerging

__all__ = ["EncoderStats", "TokenMerging"]
