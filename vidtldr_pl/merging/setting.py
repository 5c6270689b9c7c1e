"""One merge setting (method, r, layers, attention, options) and the one helper that applies it to a model.

The Lightning callback, ``compare``, the FLOPs report, the benchmarks and the tests all go through ``apply_merge``,
so a setting means the same everywhere.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from .methods import build_method
from .patch import find_mergeable, patch
from .schedule import token_counts


@dataclass
class MergeSetting:
    """A merge setting.

    method: "none", "tome", "vidtldr", "vidtldr_repshift", "random", "random_drop", "saliency_drop",
    "repshift_drop" (any name in ``METHODS``); r: per-block list or one count / fraction at ``layers`` (every block
    when None); attention: "fused", "explicit", "flex" or None (keep the model's); method_options: extra method
    arguments (e.g. {"saliency_backend": "chunked"}, {"saliency": "repshift"}, {"seed": 1}); trace_source: record
    which input patches each token holds; name: a label for tables (default: the method).
    """

    method: str = "none"
    r: list[int | float] | int | float | str | None = None
    layers: list[int] | None = None
    attention: str | None = None
    method_options: dict | None = None
    trace_source: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.method

    @property
    def merges(self) -> bool:
        """True unless the method is "none" (an all-zero r still counts as a setting that merges nothing)."""
        return build_method(self.method, **(self.method_options or {})) is not None

    def check(self) -> "MergeSetting":
        """Fail now on an unknown method or option (r is checked against a model's depth in ``apply_merge``)."""
        build_method(self.method, **(self.method_options or {}))
        return self


def as_setting(value: MergeSetting | Mapping[str, Any] | Any, **defaults: Any) -> MergeSetting:
    """A MergeSetting from a MergeSetting, a dict or a jsonargparse Namespace; ``defaults`` fill unset fields."""
    if isinstance(value, MergeSetting):
        return value
    given = dict(value) if isinstance(value, Mapping) else dict(vars(value))
    known = {f.name for f in fields(MergeSetting)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown merge setting key(s) {unknown}; known: {sorted(known)}")
    return MergeSetting(**{**{k: v for k, v in defaults.items() if v is not None}, **{k: v for k, v in given.items()}})


def set_attention(model: nn.Module, mode: str) -> None:
    """Switch the attention kernel of every mergeable encoder of model ("fused", "explicit", "flex")."""
    for encoder in find_mergeable(model):
        if hasattr(encoder, "set_attention"):
            encoder.set_attention(mode)


def apply_merge(model: nn.Module, setting: MergeSetting | Mapping[str, Any]) -> list[list[int] | None]:
    """Patch every mergeable encoder of model with ``setting`` (in place; "none" removes merging) and set its
    attention kernel. Returns, per encoder, the expected tokens after each block for its configured input (None
    when the encoder does not know its input size)."""
    setting = as_setting(setting)
    patch(model, setting.method, r=setting.r, layers=setting.layers, trace_source=setting.trace_source,
          **(setting.method_options or {}))
    if setting.attention is not None:
        set_attention(model, setting.attention)
    counts: list[list[int] | None] = []
    for encoder in find_mergeable(model):
        n = encoder.num_tokens
        if not n:
            counts.append(None)
            continue
        method = encoder.merge_settings.method
        schedule = list(encoder.merge_settings.schedule) or [0] * len(encoder.blocks)
        counts.append(token_counts(schedule, n, method.protected if method else 0))
    return counts


__all__ = ["MergeSetting", "apply_merge", "as_setting", "set_attention"]
