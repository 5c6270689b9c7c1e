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
from .state import BATCHING_MODES


@dataclass
class MergeSetting:
    """A merge setting.

    method: "none" or any name in ``METHODS`` (docs/methods.md: vidtldr, tome, tome_video, pitome, topk, evit,
    sta, stim_temporal, threshold, the drop baselines; rlt, frame_stride and resize reduce the input before the
    first block and do not use r); r: per-block list or one count / fraction at ``layers`` (every block when None); attention: "fused", "explicit", "flex" or None (keep the model's); method_options: extra method
    arguments (e.g. {"saliency_backend": "chunked"}, {"saliency": "repshift"}, {"seed": 1}); trace_source: record
    which input patches each token holds; name: a label for tables (default: the method); batching: "pad" or
    "pack", how rows of different token counts (threshold mode, RLT) share a batch (the same outputs).
    """

    method: str = "none"
    r: list[int | float] | int | float | str | None = None
    layers: list[int] | None = None
    attention: str | None = None
    method_options: dict | None = None
    trace_source: bool = False
    name: str | None = None
    batching: str = "pad"

    @property
    def label(self) -> str:
        return self.name or self.method

    @property
    def merges(self) -> bool:
        """True unless the method is "none" (an all-zero r still counts as a setting that merges nothing)."""
        return build_method(self.method, **(self.method_options or {})) is not None

    def check(self) -> "MergeSetting":
        """Fail now on an unknown method, option or batching (r is checked against a model's depth in
        ``apply_merge``)."""
        build_method(self.method, **(self.method_options or {}))
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"unknown batching {self.batching!r}; choose one of {BATCHING_MODES}")
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
        method_options: the method's options as a mapping, e.g. '{base: vidtldr, thresholds: thresholds.json}'
            for threshold mode or '{mode: hybrid, neighbourhood: spatial}' for tome_video (with --merge.method)
        batching: "pad" or "pack" for rows of different token counts (threshold mode, RLT)
    """

    method: str | None = None
    r: list[int | float] | int | float | str | None = None
    layers: list[int] | None = None
    method_options: dict | None = None
    batching: str | None = None

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
          batching=setting.batching, **(setting.method_options or {}))
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
        grid = _input_grid(encoder)
        counts.append(token_counts(schedule, n, method.protected if method else 0, method=method, grid=grid))
    return counts


def _input_grid(encoder: nn.Module):
    """The TokenGrid of the encoder's configured input (None when it cannot say: foreign encoders)."""
    if not (hasattr(encoder, "token_grid") and hasattr(encoder, "example_input")):
        return None
    return encoder.token_grid(encoder.example_input(1, device="meta"))


__all__ = ["MergeOverride", "MergeSetting", "apply_merge", "set_attention"]
