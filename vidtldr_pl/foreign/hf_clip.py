"""transformers CLIP vision: ``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, the vision tower inside
``CLIPModel`` and ``CLIPForImageClassification`` (each holds a ``CLIPVisionModel``, the encoder): merging in place.

Blocks (``CLIPEncoderLayer``): ``x + out_proj(attn(layer_norm1(x)))``, ``x + mlp(layer_norm2(x))`` (q / k / v
projections with biases, scale head_dim^-0.5). Attention: "explicit" when the model is configured
``attn_implementation="eager"``, "fused" otherwise (sdpa; flash / flex run as sdpa while merging). Prefix: the CLS.
The text tower (``CLIPTextModel``, causal, same layer class) is never touched. The merging forward takes no
attention mask (one-line error). While merging, ``output_attentions`` records nothing (the layers' attention module
is not called); ``output_hidden_states`` records the merged tokens. The model's own activation checkpointing
(``activation_checkpointing_enable``: the layers' ``gradient_checkpointing`` flags) is handed over to the merging
forward's recomputation while it merges (``hooks.hand_over_checkpointing``). ``attention_dropout`` (0 in the
released configs) is not applied while merging.

Pooling: ``pooler_output`` is ``post_layernorm`` of the CLS (nothing to do; ``image_embeds`` / ``CLIPModel``'s
``get_image_features`` project it); ``last_hidden_state`` holds the merged tokens, their sizes are in
``vision_model.last_merge_state.size`` (``vidtldr_pl.foreign.size_weighted_mean``). ``CLIPForImageClassification``
averages the patch tokens: that mean becomes the size-weighted one.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .core import head_split, register_family
from .hf_common import TransformersAdapter, hf_checkpointing_handover
from .hooks import size_weighted_classifier_input


class HFEncoderLayers(TransformersAdapter):
    """The layer layout CLIP and SigLIP share (``encoder.layers`` of ``layer_norm1``, ``self_attn.{q,k,v,out}_proj``,
    ``layer_norm2``, ``mlp``); subclasses name the classes, the prefix and the pooling."""

    def encoders(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if self.accepts(m) and hasattr(getattr(m, "encoder", None), "layers")]

    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layers

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.encoder

    def num_tokens(self, encoder: nn.Module) -> int | None:
        num_patches = getattr(encoder.embeddings, "num_patches", None)
        return None if num_patches is None else int(num_patches) + self.num_prefix_tokens(encoder)


    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.layer_norm1(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.self_attn
        h = attn.num_heads
        return (head_split(attn.q_proj(x), h), head_split(attn.k_proj(x), h), head_split(attn.v_proj(x), h),
                float(attn.scale))

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        return block.self_attn.out_proj(ctx)

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.mlp(block.layer_norm2(x))

    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        handles = hf_checkpointing_handover(encoder, self.block_runner(encoder), self.blocks(encoder))
        return handles + self.classifier_pooling(model, encoder)

    def classifier_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """``...ForImageClassification`` (``classifier(mean(last_hidden_state[:, prefix:]))``): the size-weighted
        mean."""
        for module in model.modules():
            classifier = getattr(module, "classifier", None)
            if getattr(module, "vision_model", None) is encoder and isinstance(classifier, nn.Linear):
                return size_weighted_classifier_input(encoder, classifier, self.num_prefix_tokens(encoder))
        return []  # no classifier, or num_labels 0 (an Identity: the caller reads the tokens)


@register_family
class HFCLIPVision(HFEncoderLayers):
    name = "transformers CLIPVisionModel (CLIPModel, ...WithProjection, ...ForImageClassification)"
    classes = ("transformers.models.clip.modeling_clip.CLIPVisionModel",)
    pooling = ("pooler_output / image_embeds read the CLS; CLIPForImageClassification's mean of the patch tokens "
               "becomes size-weighted; for last_hidden_state use size_weighted_mean with last_merge_state")

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 1


__all__ = ["HFCLIPVision", "HFEncoderLayers"]
