"""The merge contract of an encoder: the ``MergeableEncoder`` mixin, each block's ``LayerMerge`` slot, the static
``MergeSettings`` of an encoder, and ``find_mergeable``. Our backbones build on it; ``vidtldr_pl.foreign`` grafts it
onto transformers / timm / open_clip encoders."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .methods import MergeMethod
from .schedule import RValue
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
    batching: str = "pad"


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
        return MergeState(trace_source=settings.trace_source, proportional_attention=prop, record_shift=shift,
                          batching=settings.batching)

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


__all__ = ["LayerMerge", "MergeSettings", "MergeableEncoder", "find_mergeable"]
