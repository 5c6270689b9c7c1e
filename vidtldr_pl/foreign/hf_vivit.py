"""transformers ``VivitModel`` and ``VivitForVideoClassification`` (ViViT "model 1": one joint space-time encoder
over tubelets): merging in place.

Blocks (``VivitLayer``, run by ``VivitModel.layers``): ``x + dropout(attention(layernorm_before(x)))``,
``x + dropout(mlp(layernorm_after(x)))``. Attention: "explicit" when the model is configured
``attn_implementation="eager"``, "fused" (sdpa) otherwise. Prefix token: the CLS. Tokens: 1 +
``(num_frames / t) x (image / h) x (image / w)`` for the configured input and tubelet (t, h, w). The merging forward
takes no attention mask (one-line error).

Pooling: the CLS (``VivitPooler`` and the classifier read ``last_hidden_state[:, 0]``): nothing averages tokens, so
nothing changes; ``last_hidden_state`` holds the merged tokens, their sizes in ``last_merge_state.size``.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .core import head_split, register_family
from .hf_common import TransformersAdapter, hf_checkpointing_handover


@register_family
class HFVivit(TransformersAdapter):
    name = "transformers VivitModel / VivitForVideoClassification"
    classes = ("transformers.models.vivit.modeling_vivit.VivitModel",)
    pooling = "the CLS token (pooler and classifier): nothing averages tokens"

    # ---------------------------------------------------------------- the encoder
    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.layers

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 1

    def num_tokens(self, encoder: nn.Module) -> int | None:
        return int(encoder.embeddings.patch_embeddings.num_patches) + 1


    # ---------------------------------------------------------------- one block
    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.layernorm_before(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.attention
        heads = attn.num_attention_heads
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        return head_split(q, heads), head_split(k, heads), head_split(v, heads), float(attn.scaling)

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        return block.dropout(block.attention.o_proj(ctx))

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.dropout(block.mlp(block.layernorm_after(x)))

    # ---------------------------------------------------------------- model level
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """CLS pooling: nothing to change; transformers' own checkpointing is handed over while merging."""
        return hf_checkpointing_handover(encoder, encoder, encoder.layers)


__all__ = ["HFVivit"]
