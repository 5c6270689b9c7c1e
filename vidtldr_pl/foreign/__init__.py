"""Merging in place on transformers, timm and open_clip models (``adapt`` / ``restore``; ``apply_merge`` and
``patch`` call them for a model without our encoders). Importing this package registers every family adapter;
each adapter imports nothing of its library (it matches classes by name)."""
from .core import (
    FamilyAdapter, UnsupportedModelError, adapt, find_family, register_family, restore, size_weighted_mean,
    supported_families,
)
from . import timm_vit  # noqa: F401, E402  (registers the families)

__all__ = ["FamilyAdapter", "UnsupportedModelError", "adapt", "find_family", "register_family", "restore",
           "size_weighted_mean", "supported_families"]
