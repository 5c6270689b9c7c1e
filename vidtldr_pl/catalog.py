"""Names the command lines list in their ``--help`` without importing torch (tests/test_cli_fast.py checks them
against the method and schedule-family tables)."""
from __future__ import annotations

METHOD_NAMES = ("tome", "vidtldr", "random", "vidtldr_repshift", "random_drop", "saliency_drop", "repshift_drop")
FAMILY_NAMES = ("constant", "front", "delayed")

__all__ = ["FAMILY_NAMES", "METHOD_NAMES"]
