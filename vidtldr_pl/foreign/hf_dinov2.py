"""transformers ``Dinov2Model`` and ``Dinov2WithRegistersModel`` (and their ``...ForImageClassification``): merging
in place.

Blocks (``Dinov2Layer``): ``x + drop_path(layer_scale1(attention(norm1(x))))``,
``x + drop_path(layer_scale2(mlp(norm2(x))))`` (MLP or SwiGLU FFN). The attention's module names changed across
transformers 5.x: ``attention.{q,k,v,o}_proj`` (5.2x, installed here) and the older
``attention.attention.{query,key,value}`` + ``attention.output.dense``; both are read. Attention: "explicit" when the
model is configured ``attn_implementation="eager"``, "fused" (sdpa) otherwise. Prefix tokens: the CLS and the
``num_register_tokens`` registers. The merging forward takes no attention mask (a mask of the unmerged length
cannot apply to merged tokens: one-line error).

Pooling: ``Dinov2Model``'s ``pooler_output`` is the CLS (nothing to do); ``last_hidden_state`` holds the merged
tokens, whose sizes are in ``model.last_merge_state.size`` (use ``vidtldr_pl.foreign.size_weighted_mean``).
``...ForImageClassification`` concatenates the CLS with the mean of the patch tokens: that mean becomes the
size-weighted one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .core import head_split, register_family, size_weighted_mean
from .hf_common import TransformersAdapter, hf_checkpointing_handover

_MODELS = ("transformers.models.dinov2.modeling_dinov2.Dinov2Model",
           "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersModel")


@register_family
class HFDinov2(TransformersAdapter):
    name = "transformers Dinov2Model / Dinov2WithRegistersModel"
    classes = _MODELS
    pooling = ("pooler_output is the CLS; ...ForImageClassification's mean of the patch tokens becomes "
               "size-weighted; for last_hidden_state use size_weighted_mean with model.last_merge_state")

    # ---------------------------------------------------------------- the encoder
    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.encoder

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 1 + int(getattr(encoder.config, "num_register_tokens", 0) or 0)

    def num_tokens(self, encoder: nn.Module) -> int | None:
        num_patches = getattr(encoder.embeddings.patch_embeddings, "num_patches", None)
        return None if num_patches is None else int(num_patches) + self.num_prefix_tokens(encoder)


    # ---------------------------------------------------------------- one block
    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.norm1(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.attention
        if hasattr(attn, "q_proj"):  # transformers 5.2x
            heads = attn.num_attention_heads
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            scale = attn.scaling
        else:  # older: attention.attention.{query,key,value}
            inner = attn.attention
            heads = inner.num_attention_heads
            q, k, v = inner.query(x), inner.key(x), inner.value(x)
            scale = inner.attention_head_size ** -0.5
        return head_split(q, heads), head_split(k, heads), head_split(v, heads), float(scale)

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        attn = block.attention
        if hasattr(attn, "o_proj"):
            out = attn.o_proj(ctx)
        else:
            out = attn.output.dropout(attn.output.dense(ctx))
        return block.drop_path(block.layer_scale1(out))

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.drop_path(block.layer_scale2(block.mlp(block.norm2(x))))

    # ---------------------------------------------------------------- pooling
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """``...ForImageClassification``: ``classifier(cat[CLS, mean(patch tokens)])`` reads the size-weighted mean
        (a hook keeps the encoder's output; a pre-hook on the classifier replaces the plain mean)."""
        handles = hf_checkpointing_handover(encoder, self.block_runner(encoder), self.blocks(encoder))
        head = None
        for module in model.modules():
            if getattr(module, "dinov2", None) is encoder or getattr(module, "dinov2_with_registers", None) is encoder:
                head = module
        classifier = getattr(head, "classifier", None)
        if not isinstance(classifier, nn.Linear):  # no head, or num_labels == 0 (an Identity)
            return handles
        skip = self.num_prefix_tokens(encoder)
        seen: dict[str, Any] = {}

        def keep_output(module: nn.Module, args: tuple, output: Any) -> None:
            seen["tokens"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

        def size_aware_mean(module: nn.Module, args: tuple) -> tuple | None:
            tokens, state = seen.pop("tokens", None), encoder.last_merge_state
            if tokens is None or state is None or state.size is None:
                return None
            x = args[0]
            c = tokens.shape[-1]
            pooled = size_weighted_mean(tokens, state, skip=skip).to(x.dtype)
            return (_replace_mean(x, pooled, c),)

        return handles + [encoder.register_forward_hook(keep_output),
                          classifier.register_forward_pre_hook(size_aware_mean)]


def _replace_mean(x: Tensor, pooled: Tensor, c: int) -> Tensor:
    """x = cat[CLS (B, C), mean (B, C)] -> cat[CLS, pooled]."""
    return torch.cat([x[..., :c], pooled], dim=-1)


__all__ = ["HFDinov2"]
