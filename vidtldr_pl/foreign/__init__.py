"""Merging in place on transformers, timm and open_clip models (``adapt`` / ``restore``; ``apply_merge`` and
``patch`` call them for a model without our encoders). Importing this package registers every family adapter;
each adapter imports nothing of its library (it matches classes by name)."""
from .core import (
    FamilyAdapter, UnsupportedModelError, adapt, find_family, register_family, restore, size_weighted_mean,
    supported_families,
)
from . import timm_vit  # noqa: F401, E402  (registers the families)
from . import hf_dinov2  # noqa: F401, E402
from . import hf_videomae  # noqa: F401, E402
from . import hf_vivit  # noqa: F401, E402
from . import hf_timesformer  # noqa: F401, E402
from . import hf_xclip  # noqa: F401, E402
from . import hf_clip  # noqa: F401, E402
from . import hf_siglip  # noqa: F401, E402
from . import open_clip_vit  # noqa: F401, E402

__all__ = ["FamilyAdapter", "UnsupportedModelError", "adapt", "find_family", "register_family", "restore",
           "size_weighted_mean", "supported_families"]
