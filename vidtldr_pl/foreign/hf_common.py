"""What the transformers families share: the attention kernel from ``config._attn_implementation``, attention masks
refused while merging (they have the unmerged length), transformers' per-layer checkpointing handed over to the
merging forward's own recomputation."""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import UsageError
from .core import FamilyAdapter
from .hooks import hand_over_checkpointing


def refuse_masks(block: nn.Module, args: tuple, kwargs: dict, position: int = 1) -> None:
    """A one-line UsageError when a block is called with an attention mask (it has the unmerged length)."""
    mask = args[position] if len(args) > position else kwargs.get("attention_mask")
    if mask is not None:
        raise UsageError(f"{type(block).__name__}: merging cannot apply an attention mask (it has the unmerged "
                         f"length); call the model without attention_mask, or with merging off")


def hf_checkpointing_handover(encoder: nn.Module, runner: nn.Module, blocks: nn.ModuleList) -> list[RemovableHandle]:
    """transformers' own per-layer checkpointing re-runs a whole layer (merge included) in the backward pass: while
    the encoder merges, hand it over to the merging forward's own recomputation (``hooks.hand_over_checkpointing``)."""
    return hand_over_checkpointing(runner, encoder, lambda: blocks,
                                   lambda: [(block, "gradient_checkpointing") for block in blocks])


class TransformersAdapter(FamilyAdapter):
    """A transformers family: "explicit" attention for ``attn_implementation="eager"``, "fused" (sdpa) otherwise;
    a block called with an attention mask while merging is refused in one line."""

    def attention_mode(self, encoder: nn.Module) -> str:
        return "explicit" if encoder.config._attn_implementation == "eager" else "fused"

    def hidden_states(self, block: nn.Module, args: tuple, kwargs: dict) -> Tensor:
        refuse_masks(block, args, kwargs)
        return super().hidden_states(block, args, kwargs)


__all__ = ["TransformersAdapter", "hf_checkpointing_handover", "refuse_masks"]
