"""open_clip ``VisionTransformer`` (the ``visual`` tower of ``open_clip.CLIP`` / ``CustomTextCLIP`` / ``CoCa``, or
alone): merging in place.

Blocks: ``ResidualAttentionBlock`` — ``x + ls_1(attn(ln_1(x)))`` with ``attn`` an ``nn.MultiheadAttention``
(packed ``in_proj_weight`` / ``in_proj_bias``, ``out_proj``, scale head_dim^-0.5), ``x + ls_2(mlp(ln_2(x)))`` — and
``CustomResidualAttentionBlock`` (open_clip's own ``Attention``: q / k LayerNorms, per-head scale, inner norm,
``ln_attn``, the MLP's inner norm; all read; scaled cosine attention gets a one-line refusal: open_clip 3.3.0's
own forward of it fails). Attention: "fused" (``nn.MultiheadAttention``'s path is SDPA). Layout:
open_clip 3.x runs the blocks batch first; a ``batch_first=False`` stack (L, N, D) is transposed around the merging
forward. The vision tower passes no ``attn_mask`` (one-line error if a caller does, or passes cross-attention
keys). Prefix: the CLS (always first). The model's own ``set_grad_checkpointing`` (which checkpoints whole blocks,
merge included) is handed over to the merging forward's recomputation while it merges
(``hooks.hand_over_checkpointing``). ``forward_intermediates`` runs the blocks without merging (it bypasses the
transformer's ``forward``, where each forward's MergeState starts). Attention-probability dropout (0 in every
open_clip config) is not applied while merging.

Pooling (``_global_pool``): "tok" reads the CLS (nothing to do); "avg" (the mean of the tokens after the CLS)
becomes the size-weighted mean; "none" returns the merged tokens (sizes in ``visual.last_merge_state.size``).
An attentional pooler (CoCa: ``attn_pool``, and ``attn_pool_contrastive`` in "parallel" mode, which read the
tokens) gets the log-size bias in its attention (proportional attention, as SigLIP's MAP head: a token of size s
weighs as s identical keys); its queries' own pooling is left as written.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import UsageError
from .core import FamilyAdapter, graft_attribute, head_split, register_family, size_weighted_mean
from .hooks import hand_over_checkpointing, size_bias_in_attention_pool

_EXTRA_ARGS = ("k_x", "v_x", "attn_mask")


def _custom(block: nn.Module) -> bool:
    """open_clip's ``CustomResidualAttentionBlock`` (its ``Attention`` has ``ln_q``), not ``nn.MultiheadAttention``."""
    return not isinstance(block.attn, nn.MultiheadAttention)


def _check_block(block: nn.Module) -> None:
    attn = block.attn
    if _custom(block):
        if attn.logit_scale is not None:
            raise UsageError(f"open_clip {type(block).__name__} with scaled cosine attention is not supported "
                             f"(open_clip 3.3.0's own forward of it fails on 4-D heads: no reference to match)")
    elif attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
        raise UsageError(f"open_clip {type(block).__name__}: an nn.MultiheadAttention with separate q / k / v weights, "
                         f"bias_k / bias_v or add_zero_attn is not a plain self-attention; not mergeable")


def _batch_first(block: nn.Module) -> bool:
    return _custom(block) or bool(block.attn.batch_first)


@register_family
class OpenCLIPViT(FamilyAdapter):
    name = "open_clip VisionTransformer"
    classes = ("open_clip.transformer.VisionTransformer",)
    pooling = ("pool_type 'avg' becomes the size-weighted mean of the tokens after the CLS; 'tok' reads the CLS; "
               "an attentional pooler gets the log-size bias in its attention")

    # ---------------------------------------------------------------- the encoder
    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.transformer.resblocks

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.transformer

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 1

    def num_tokens(self, encoder: nn.Module) -> int | None:
        gh, gw = encoder.grid_size
        return int(gh) * int(gw) + 1

    def attention_mode(self, encoder: nn.Module) -> str:
        """"fused"; first refuses (one line, before anything is grafted) a block whose attention is not a plain
        packed self-attention."""
        for block in self.blocks(encoder):
            _check_block(block)
        return "fused"

    # ---------------------------------------------------------------- one block
    def hidden_states(self, block: nn.Module, args: tuple, kwargs: dict) -> Tensor:
        """``ResidualAttentionBlock(q_x, k_x, v_x, attn_mask)`` / ``CustomResidualAttentionBlock(x, attn_mask)`` ->
        (B, N, C) (transposed from (N, B, C) for a sequence-first stack)."""
        names = ("attn_mask",) if _custom(block) else _EXTRA_ARGS
        extra = dict(zip(names, args[1:]))
        extra.update({k: v for k, v in kwargs.items() if k in names})
        given = [k for k, v in extra.items() if v is not None]
        if given:
            raise UsageError(f"{type(block).__name__}: merging runs self-attention without a mask; got "
                             f"{', '.join(given)} (call it with merging off)")
        x = args[0] if args else kwargs.get("q_x", kwargs.get("x"))
        return x if _batch_first(block) else x.transpose(0, 1)

    def block_output(self, block: nn.Module, x: Tensor, args: tuple, kwargs: dict) -> Tensor:
        return x if _batch_first(block) else x.transpose(0, 1)

    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.ln_1(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.attn
        q, k, v = (head_split(t, attn.num_heads)
                   for t in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
        scale = float(attn.head_dim ** -0.5)
        if _custom(block):
            q, k = attn.ln_q(q), attn.ln_k(k)
        return q, k, v, scale

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        attn = block.attn
        if not _custom(block):
            return block.ls_1(attn.out_proj(ctx))
        if attn.head_scale is not None:  # (H, 1, 1) per head
            b, n, c = ctx.shape
            ctx = (ctx.reshape(b, n, attn.num_heads, -1) * attn.head_scale.reshape(attn.num_heads, 1)).reshape(b, n, c)
        out = attn.out_drop(attn.out_proj(attn.ln_inner(ctx)))
        return block.ls_1(block.ln_attn(out))

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.ls_2(block.mlp(block.ln_2(x)))

    # ---------------------------------------------------------------- model level
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        runner = self.block_runner(encoder)
        handles = hand_over_checkpointing(runner, encoder, lambda: self.blocks(encoder),
                                          lambda: [(runner, "grad_checkpointing")])
        if encoder.attn_pool is not None:
            handles.append(size_bias_in_attention_pool(encoder.attn_pool.attn, encoder))
            contrastive = getattr(encoder, "attn_pool_contrastive", None)
            if contrastive is not None and getattr(encoder, "attn_pool_type", "") == "parallel":
                handles.append(size_bias_in_attention_pool(contrastive.attn, encoder))
            return handles
        if encoder.pool_type != "avg":
            return handles  # "tok" (the CLS) or "none" (the tokens themselves)
        original = encoder._global_pool

        def size_aware_global_pool(x: Tensor) -> tuple[Tensor, Tensor]:
            """x (B, N', C) -> (pooled (B, C), tokens (B, N' - 1, C)), pooled size-weighted after a merge."""
            state = encoder.last_merge_state
            if encoder.pool_type == "avg" and state is not None and state.size is not None \
                    and state.size.shape[1] == x.shape[1]:
                return size_weighted_mean(x, state, skip=1), x[:, 1:]
            return original(x)

        graft_attribute(encoder, "_global_pool", size_aware_global_pool)  # restore drops the instance attribute
        return handles


__all__ = ["OpenCLIPViT"]
