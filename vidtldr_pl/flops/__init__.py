"""FLOPs and token accounting for merged encoders (the names load on first use, so that ``python -m
vidtldr_pl.flops.report --help`` answers without importing torch)."""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["FlopReport", "call_flops", "count_flops", "encoder_flops", "meta_call", "row_flops", "schedule_flops",
           "video_flops"]
_MODULE = {"video_flops": ".input", "row_flops": ".rows", "schedule_flops": ".rows"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(_MODULE.get(name, ".counter"), __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
