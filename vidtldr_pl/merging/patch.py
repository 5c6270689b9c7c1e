"""One-call insertion of a merge method into a backbone, ToMe-style: ``patch(model, "vidtldr", r=[...])``.

A backbone opts in by building its encoder on ``MergeableEncoder`` (blocks with a ``merge`` slot that call it
between the attention residual and the MLP, and a forward that threads a fresh ``MergeState`` through them).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .methods import MergeMethod, build_method
from .schedule import RValue, build_schedule
from .state import AttentionInfo, MergeState


class LayerMerge(nn.Module):
    """The merge slot of one block: a method and this block's r. No parameters."""

    def __init__(self, method: MergeMethod, r: RValue) -> None:
        super().__init__()
        self.method = method
        self.r = r

    @property
    def needs_attention(self) -> bool:
        return self.method.needs_attention

    @property
    def needs_shift(self) -> bool:
        return self.method.needs_shift

    @property
    def position(self) -> str:
        """"attn": the block calls this slot after the attention residual; "mlp": after the MLP residual."""
        return self.method.position

    def forward(self, x: Tensor, state: MergeState, attn: AttentionInfo | None) -> Tensor:
        """x: (B, N, C) -> (B, N', C)."""
        return self.method(x, state, attn, self.r)

    def extra_repr(self) -> str:
        return f"method={self.method.name}, r={self.r}"


@dataclass
class MergeSettings:
    """Static, per-encoder merge options (not per-forward state)."""

    method: MergeMethod | None = None
    schedule: tuple[RValue, ...] = ()
    trace_source: bool = False


class MergeableEncoder(nn.Module):
    """Mixin for encoders that support merging (the merge contract). Subclasses define ``self.blocks``
    (nn.ModuleList) whose blocks have a ``merge`` attribute (None or LayerMerge) called between the attention
    residual and the MLP (``merge.position == "attn"``) or after the MLP residual ("mlp"), record the
    representation shift of the MLP in ``state.shift`` when ``state.record_shift``, call ``self.new_merge_state()``
    at the start of forward, and declare ``num_prefix_tokens``: the leading tokens (CLS) that ``patch`` protects
    from merging. ``backbones.layers.Block`` does all of this."""

    blocks: nn.ModuleList
    merge_settings: MergeSettings

    def new_merge_state(self) -> MergeState:
        settings = getattr(self, "merge_settings", None) or MergeSettings()
        method = settings.method
        prop = method.proportional_attention if method is not None else True
        shift = method.needs_shift if method is not None else False
        return MergeState(trace_source=settings.trace_source, proportional_attention=prop, record_shift=shift)

    @property
    def num_tokens(self) -> int | None:
        """Tokens entering the first block for the configured input, if the encoder knows it."""
        return None

    @property
    def num_prefix_tokens(self) -> int:
        """Leading tokens (CLS, ...) that never merge."""
        return 0


def find_mergeable(model: nn.Module) -> list[MergeableEncoder]:
    """All MergeableEncoder modules in model (the model itself included)."""
    return [m for m in model.modules() if isinstance(m, MergeableEncoder)]


def patch(
    model: nn.Module,
    method: str | MergeMethod = "vidtldr",
    r: RValue | Sequence[RValue] | str | None = None,
    layers: Sequence[int] | None = None,
    trace_source: bool = False,
    **method_kwargs: object,
) -> nn.Module:
    """Insert a merge method into every MergeableEncoder of model, in place; returns model.

    r: per-block list (e.g. [600, 200, 100]), or one count / fraction at ``layers`` (all blocks if None).
    Each encoder's ``num_prefix_tokens`` (CLS) are protected (``protected`` is raised to it, never lowered).
    method "none" or r all zero removes merging. Raises ScheduleError for an r that does not fit the depth.
    """
    encoders = find_mergeable(model)
    if not encoders:
        raise TypeError(
            f"{type(model).__name__} has no MergeableEncoder: merging needs a backbone whose blocks expose a "
            "merge slot (vidtldr_pl.backbones); see vidtldr_pl.merging.patch.MergeableEncoder"
        )
    merge_method = build_method(method, **method_kwargs)
    for encoder in encoders:
        schedule = build_schedule(r, len(encoder.blocks), layers)
        if merge_method is None or not any(schedule):
            _clear(encoder)
            continue
        encoder_method = merge_method
        prefix = encoder.num_prefix_tokens
        if encoder_method.protected < prefix:  # the encoder's CLS tokens are protected without the user saying so
            encoder_method = copy.copy(merge_method)
            encoder_method.protected = prefix
        for block, r_block in zip(encoder.blocks, schedule):
            block.merge = LayerMerge(encoder_method, r_block) if r_block else None
        encoder.merge_settings = MergeSettings(encoder_method, tuple(schedule), trace_source)
    return model


def _clear(encoder: MergeableEncoder) -> None:
    for block in encoder.blocks:
        block.merge = None
    encoder.merge_settings = MergeSettings()


def unpatch(model: nn.Module) -> nn.Module:
    """Remove merging from every MergeableEncoder of model (in place); returns model."""
    for encoder in find_mergeable(model):
        _clear(encoder)
    return model
