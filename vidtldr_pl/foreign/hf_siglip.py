"""transformers SigLIP vision: ``SiglipVisionModel``, the vision tower inside ``SiglipModel`` and
``SiglipForImageClassification`` (each holds a ``SiglipVisionModel``, the encoder): merging in place.

Blocks (``SiglipEncoderLayer``) are laid out as CLIP's (``hf_clip.HFEncoderLayers``: ``layer_norm1``,
``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``); eager -> "explicit", sdpa (and the others) -> "fused".
SigLIP has no CLS: no prefix token, every token may merge. The text tower is never touched.

Pooling:
- ``pooler_output`` is the MAP head (``SiglipMultiheadAttentionPoolingHead``: a learned probe attending over the
  tokens, then LayerNorm + MLP). A merged token stands for several patches, so the probe's attention gets the
  log-size bias (proportional attention, the same rule the merged blocks use: a token of size s weighs as s
  identical keys; ``hooks.size_bias_in_attention_pool``). Without it the head would count a merged token as one
  patch. An unmerged forward gets no mask at all, so merging off stays bit-identical.
- ``SiglipForImageClassification`` averages all tokens: that mean becomes the size-weighted one.
- ``last_hidden_state`` holds the merged tokens; their sizes are in ``vision_model.last_merge_state.size``.
"""
from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

from .core import register_family
from .hf_clip import HFEncoderLayers
from .hooks import size_bias_in_attention_pool


@register_family
class HFSiglipVision(HFEncoderLayers):
    name = "transformers SiglipVisionModel (SiglipModel, SiglipForImageClassification)"
    classes = ("transformers.models.siglip.modeling_siglip.SiglipVisionModel",)
    pooling = ("pooler_output (MAP head): the probe's attention gets the log-size bias of the merged tokens; "
               "SiglipForImageClassification's mean of all tokens becomes size-weighted")

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 0

    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        handles = super().install_pooling(model, encoder)
        head = getattr(encoder, "head", None) if getattr(encoder, "use_head", False) else None
        if head is not None:
            handles.append(size_bias_in_attention_pool(head.attention, encoder))
        return handles


__all__ = ["HFSiglipVision"]
