"""One merge setting (method, r, layers, attention, options), the partial setting the ``--merge.*`` options give,
and the one helper that applies a setting to a model.

The Lightning callback, ``compare``, the FLOPs report, the benchmarks and the tests all go through ``apply_merge``,
so a setting means the same everywhere.
"""
from __future__ import annotations

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
    "repshift_drop", "rlt", "frame_stride", "resize" (any name in ``METHODS``; the last three reduce the input before
    the first block and do not use r: ``merging.input_reduction``); r: per-block list or one count / fraction at ``layers`` (every block
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


@dataclass
class MergeOverride:
    """The ``--merge.*`` options of evaluate.py / train.py: a partial MergeSetting (None keeps the config's).

    Args:
        method: merge with this method only (none, tome, vidtldr, ...): replaces the config's TokenMerging callback
            and `compare` rows
        r: tokens removed per block ([600,200,100]) or one count / fraction at --merge.layers; alone, it replaces r
            wherever the config merges
        layers: blocks a single r applies to
    """

    method: str | None = None
    r: list[int | float] | int | float | str | None = None
    layers: list[int] | None = None

    @property
    def given(self) -> dict[str, Any]:
        """The fields set (not None), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def set_attention(model: nn.Module, mode: str) -> None:
    """Switch the attention kernel of every mergeable encoder of model ("fused", "explicit", "flex")."""
    for encoder in find_mergeable(model):
        if hasattr(encoder, "set_attention"):
            encoder.set_attention(mode)


def apply_merge(model: nn.Module, setting: MergeSetting) -> list[list[int] | None]:
    """Patch every mergeable encoder of model with ``setting`` (in place; "none" removes merging) and set its
    attention kernel. Returns, per encoder, the expected tokens after each block for its configured input (None
    when the encoder does not know its input size, or under RLT, whose count depends on the pixels)."""
    patch(model, setting.method, r=setting.r, layers=setting.layers, trace_source=setting.trace_source,
          **(setting.method_options or {}))
    if setting.attention is not None:
        set_attention(model, setting.attention)
    counts: list[list[int] | None] = []
    from .input_reduction import is_input_method  # here, so that its methods register in the package's import order
    for encoder in find_mergeable(model):
        n = encoder.num_tokens
        method = encoder.merge_settings.method
        if n and is_input_method(method):  # the tokens it leaves (None: RLT's depend on the pixels)
            n = method.tokens_entering(encoder)
        if not n:
            counts.append(None)
            continue
        schedule = list(encoder.merge_settings.schedule) or [0] * len(encoder.blocks)
        counts.append(token_counts(schedule, n, method.protected if method else 0))
    return counts


__all__ = ["MergeOverride", "MergeSetting", "apply_merge", "set_attention"]
