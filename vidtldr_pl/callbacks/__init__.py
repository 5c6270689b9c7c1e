"""Lightning callbacks."""
from .vidtldr import TokenMerging

VidTLDRCallback = TokenMerging

__all__ = ["TokenMerging", "VidTLDRCallback"]
