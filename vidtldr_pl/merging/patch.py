"""One-call insertion of a merge method into a backbone, ToMe-style: ``patch(model, "vidtldr", r=[...])``.

A backbone opts in by building its encoder on ``MergeableEncoder`` (blocks with a ``merge`` slot that call it
between the attention residual and the MLP, and a forward that threads a fresh ``MergeState`` through them); a
transformers / timm / open_clip model gets the same slots grafted in place (``vidtldr_pl.foreign``).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .encoder import LayerMerge, MergeableEncoder, MergeSettings, find_mergeable
from .methods import MergeMethod, build_method
from .schedule import RValue, build_schedule
from .state import BATCHING_MODES


def patch(
    model: nn.Module,
    method: str | MergeMethod = "vidtldr",
    r: RValue | Sequence[RValue] | str | None = None,
    layers: Sequence[int] | None = None,
    trace_source: bool = False,
    batching: str = "pad",
    **method_kwargs: object,
) -> nn.Module:
    """Insert a merge method into every MergeableEncoder of model, in place; returns model.

    r: per-block list (e.g. [600, 200, 100]), or one count / fraction at ``layers`` (all blocks if None).
    Each encoder's ``num_prefix_tokens`` (CLS) are protected (``protected`` is raised to it, never lowered).
    method "none" or r all zero removes merging. Raises ScheduleError for an r that does not fit the depth.
    batching: how rows of different token counts (threshold mode, RLT) share a batch: "pad" (padding at the end of
    each row, masked) or "pack" (the rows concatenated into one, block-diagonal attention); the same outputs.
    """
    if batching not in BATCHING_MODES:
        raise ValueError(f"unknown batching {batching!r}; choose one of {BATCHING_MODES}")
    merge_method = build_method(method, **method_kwargs)
    encoders = find_mergeable(model)
    from .input_reduction import is_input_method  # here, so that its methods register in the package's import order
    if is_input_method(merge_method):  # RLT, frame_stride, resize: before the first block, r unused
        _check_input_hook(model, encoders, merge_method)
    if not encoders:  # a transformers / timm / open_clip model: graft the merge slots (one line if unknown)
        from ..foreign import adapt

        encoders = adapt(model)
    for encoder in encoders:
        schedule = build_schedule(r, len(encoder.blocks), layers)
        if is_input_method(merge_method):
            _clear(encoder)
            encoder_method = copy.copy(merge_method)
            encoder_method.protected = max(encoder_method.protected, encoder.num_prefix_tokens)
            encoder.merge_settings = MergeSettings(encoder_method, (0,) * len(encoder.blocks), trace_source, batching)
            continue
        if merge_method is None or not any(schedule):
            _clear(encoder)
            continue
        encoder_method = merge_method.for_encoder(encoder)
        prefix = encoder.num_prefix_tokens
        if encoder_method.protected < prefix:  # the encoder's CLS tokens are protected without the user saying so
            encoder_method = copy.copy(encoder_method)
            encoder_method.protected = prefix
        for block, r_block in zip(encoder.blocks, schedule):
            block.merge = LayerMerge(encoder_method, r_block) if r_block else None
        encoder.merge_settings = MergeSettings(encoder_method, tuple(schedule), trace_source, batching)
    return model


def _check_input_hook(model: nn.Module, encoders: list[MergeableEncoder], method: MergeMethod) -> None:
    """A ValueError unless every encoder has the input hook an input reduction needs (``supports_input_reduction``)."""
    lacking = [type(e).__name__ for e in encoders if not getattr(e, "supports_input_reduction", False)]
    if not encoders or lacking:
        raise ValueError(f"method {method.name!r} reduces the input before the first block, which "
                         f"{', '.join(lacking) or type(model).__name__} (a transformers / timm / open_clip model) has "
                         "no hook for: use it on a registered backbone, or a block method here")


def _clear(encoder: MergeableEncoder) -> None:
    for block in encoder.blocks:
        block.merge = None
    encoder.merge_settings = MergeSettings()


def unpatch(model: nn.Module) -> nn.Module:
    """Remove merging from every MergeableEncoder of model (in place); a foreign model (``vidtldr_pl.foreign``) gets
    its own classes back, exactly as before ``patch``. Returns model."""
    encoders = find_mergeable(model)
    for encoder in encoders:
        _clear(encoder)
    if any(hasattr(e, "foreign_family") for e in encoders):
        from ..foreign import restore

        restore(model)
    return model
