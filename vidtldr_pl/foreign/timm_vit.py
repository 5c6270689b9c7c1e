"""timm ``VisionTransformer`` (and its subclasses: DeiT distilled, registers, ...): merging in place.

Blocks ``x + drop_path1(ls1(attn(norm1(x))))``, ``x + drop_path2(ls2(mlp(norm2(x))))``; the attention's q / k
norms, its output norm and its gate are kept. Prefix tokens: timm's ``num_prefix_tokens`` (CLS, registers,
distillation). Pooling: ``global_pool="avg"`` averages the tokens (after the prefix unless ``pool_include_prefix``):
made size-weighted; "token" (CLS) and "map" (attention pooling) need nothing; "max" / "avgmax" stay as written.
timm's ``grad_checkpointing`` is handed over to the merging forward's recomputation while the model merges (through
``model(x)``; ``forward_features`` called alone with timm's checkpointing on runs its blocks unmerged).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .core import FamilyAdapter, graft_attribute, register_family, size_weighted_mean
from .hooks import hand_over_checkpointing


@register_family
class TimmViT(FamilyAdapter):
    name = "timm VisionTransformer"
    classes = ("timm.models.vision_transformer.VisionTransformer",)
    pooling = "global_pool='avg' becomes the size-weighted mean of the non-prefix tokens; 'token' reads the CLS"

    def blocks(self, encoder: nn.Module) -> nn.Module:
        return encoder.blocks

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.blocks  # an nn.Sequential: forward_features and forward both go through it

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return int(encoder.__dict__["num_prefix_tokens"])

    def num_tokens(self, encoder: nn.Module) -> int | None:
        grid = getattr(encoder.patch_embed, "num_patches", None)
        return None if grid is None else int(grid) + self.num_prefix_tokens(encoder)

    def attention_mode(self, encoder: nn.Module) -> str:
        return "fused" if all(b.attn.fused_attn for b in encoder.blocks) else "explicit"

    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.norm1(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.attn
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        block._gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        return attn.q_norm(q), attn.k_norm(k), v, attn.scale

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        attn = block.attn
        x = attn.norm(ctx)
        gate = block.__dict__.pop("_gate", None)
        if gate is not None:
            x = x * gate
        return block.drop_path1(block.ls1(attn.proj_drop(attn.proj(x))))

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        # timm's own checkpointing (checkpoint_seq) calls the blocks one by one, past the hooks of ``blocks``: while
        # the model merges, its forward hands it over to the merging forward's recomputation
        handles = hand_over_checkpointing(encoder, encoder, lambda: encoder.blocks,
                                          lambda: [(encoder, "grad_checkpointing")])
        if encoder.global_pool != "avg" or encoder.attn_pool is not None:
            return handles  # CLS ("token"), attention pooling ("map") or none: nothing averages tokens
        original = encoder.pool
        skip = 0 if encoder.pool_include_prefix else self.num_prefix_tokens(encoder)

        def size_aware_pool(x: Tensor, pool_type: str | None = None) -> Tensor:
            state = encoder.last_merge_state
            if (pool_type or encoder.global_pool) == "avg" and state is not None and state.size is not None:
                return size_weighted_mean(x, state, skip=skip)
            return original(x, pool_type)

        graft_attribute(encoder, "pool", size_aware_pool)  # an instance attribute over the method; restore drops it
        return handles
