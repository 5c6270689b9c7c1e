"""transformers ``TimesformerModel`` and ``TimesformerForVideoClassification``: merging in place, keeping the
T x HW grid that divided space-time attention needs.

Divided space-time (the default ``attention_type``): each ``TimesformerLayer`` runs a temporal attention over the T
frames of every spatial position, then a spatial attention over the HW positions (and the CLS) of every frame, then
the MLP. Both need the grid: every frame must hold the same positions. So merging works on *tubes*: a tube is one
spatial position in all T frames (its T tokens side by side, ``(B, 1 + HW, T x C)``; the CLS fills all T slots), and
every method merges or drops whole tubes, i.e. the same r positions in every frame, with the same weights in every
frame. The grid stays T x HW' and both attentions stay well-defined:

- temporal attention: over the T tokens of a tube, which all have the tube's size, so no size bias is needed;
- spatial attention (per frame, CLS included): log(tube size) as the key bias (proportional attention);
- what a method reads of the attention: the tube-level logits are the mean over frames of the spatial logits
  (queries concatenated over the frames and divided by T, keys concatenated), given as scaled q / k in both attention
  modes, so the saliency (vid-TLDR, saliency_drop) and the keys (ToMe) are those of the whole tube; the hidden state
  the matching compares is the tube's T x C vector; the representation shift its T x C norm.

Counts are per frame, as for the frame-wise models: ``num_tokens`` is 1 + HW, r is the number of positions merged in
every frame (r x T tokens), ``tokens_per_layer`` is 1 + HW' (the sequence holds 1 + HW' x T tokens). Between the
layers the hidden states keep transformers' layout ``(B, 1 + HW' x T, C)`` (token 1 + s T + t is position s of frame
t), so the final layernorm and the CLS classifier run as written; ``last_merge_state.size`` holds one size per tube
(token 1 + s T + t has size ``size[:, 1 + s]``). The CLS is the prefix token (never merged).

``attention_type="joint_space_time"`` (one attention over all 1 + HW x T tokens) and ``"space_only"`` (frames as the
batch) need no grid: their tokens merge one by one, as any ViT's. TimeSformer's attention is always written out
(no sdpa in transformers), so the merging forward runs "explicit"; ``set_attention("fused")`` switches it to sdpa.
Pooling: the CLS (classifier): nothing averages tokens. ``output_attentions`` is refused while merging (one line).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import UsageError
from ..merging.state import AttentionInfo
from .core import FamilyAdapter, attend, register_family
from .hf_common import hf_checkpointing_handover


def _divided(block: nn.Module) -> bool:
    return block.attention_type == "divided_space_time"


def to_tubes(x: Tensor, frames: int) -> Tensor:
    """(B, 1 + S x T, C) in transformers' order (position-major) -> (B, 1 + S, T x C); the CLS fills all T slots."""
    b, n, c = x.shape
    if (n - 1) % frames:
        raise UsageError(f"TimeSformer: {n - 1} patch tokens are not a whole number of {frames}-frame tubes; "
                         "give the model the configured number of frames")
    return torch.cat([x[:, :1].repeat(1, 1, frames), x[:, 1:].reshape(b, (n - 1) // frames, frames * c)], dim=1)


def from_tubes(x: Tensor, frames: int) -> Tensor:
    """(B, 1 + S, T x C) -> (B, 1 + S x T, C) (the CLS from its first slot)."""
    b, n, tc = x.shape
    c = tc // frames
    return torch.cat([x[:, :1, :c], x[:, 1:].reshape(b, (n - 1) * frames, c)], dim=1)


def _qkv(attention: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """A ``TimeSformerAttention`` (its ``attention.qkv``) on x (B, N, C) -> q, k, v (B, H, N, d), scale."""
    attn = attention.attention
    b, n, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, float(attn.scale)


@register_family
class HFTimesformer(FamilyAdapter):
    name = "transformers TimesformerModel / TimesformerForVideoClassification"
    classes = ("transformers.models.timesformer.modeling_timesformer.TimesformerModel",)
    pooling = "the CLS token (classifier): nothing averages tokens; divided space-time merges whole tubes"

    # ---------------------------------------------------------------- the encoder
    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.encoder

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 1

    def num_tokens(self, encoder: nn.Module) -> int | None:
        patches = int(encoder.embeddings.num_patches)
        if encoder.config.attention_type == "joint_space_time":
            return 1 + patches * int(encoder.config.num_frames)
        return 1 + patches  # divided: per frame (tubes); space_only: frames are the batch

    def attention_mode(self, encoder: nn.Module) -> str:
        return "explicit"

    # ---------------------------------------------------------------- calls and returns
    def hidden_states(self, block: nn.Module, args: tuple, kwargs: dict) -> Tensor:
        if (args[1] if len(args) > 1 else kwargs.get("output_attentions")):
            raise UsageError(f"{type(block).__name__}: merging does not return attention maps; call the model "
                             "without output_attentions, or with merging off")
        x = super().hidden_states(block, args, kwargs)
        return to_tubes(x, block.config.num_frames) if _divided(block) else x

    def block_output(self, block: nn.Module, x: Tensor, args: tuple, kwargs: dict) -> Any:
        return (from_tubes(x, block.config.num_frames) if _divided(block) else x,)

    # ---------------------------------------------------------------- one block
    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.layernorm_before(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        return _qkv(block.attention, x)

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        return block.drop_path(block.attention.output(ctx))

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        if not _divided(block):
            return self._mlp(block, x)
        frames = block.config.num_frames
        return to_tubes(self._mlp(block, from_tubes(x, frames)), frames)

    @staticmethod
    def _mlp(block: nn.Module, x: Tensor) -> Tensor:
        return block.drop_path(block.output(block.intermediate(block.layernorm_after(x))))

    def attn_branch(self, block: nn.Module, x: Tensor, bias: Tensor | None, want_info: bool
                    ) -> tuple[Tensor, AttentionInfo | None]:
        """Joint / space-only: one attention. Divided: x (B, 1 + S, T x C) tubes -> (what the temporal and spatial
        residuals add, in tubes; tube-level AttentionInfo)."""
        if not _divided(block):
            return super().attn_branch(block, x, bias, want_info)
        frames = block.config.num_frames
        b, n, tc = x.shape
        s, c = n - 1, tc // frames
        cls, tokens = x[:, 0, :c], x[:, 1:].reshape(b, s * frames, c)
        # temporal: the T tokens of each tube attend to each other (one size per tube: no bias)
        q, k, v, scale = _qkv(block.temporal_attention, block.temporal_layernorm(tokens.reshape(b * s, frames, c)))
        ctx, _ = attend(block, q, k, v, scale, None, False)
        res_t = block.temporal_dense(block.drop_path(block.temporal_attention.output(ctx)).reshape(b, s * frames, c))
        temporal = tokens + res_t
        # spatial: per frame, the CLS and the S positions, log(tube size) on the keys
        spatial = temporal.reshape(b, s, frames, c).transpose(1, 2).reshape(b * frames, s, c)
        spatial = torch.cat([cls[:, None].expand(b, frames, c).reshape(b * frames, 1, c), spatial], dim=1)
        q, k, v, scale = _qkv(block.attention, block.layernorm_before(spatial))
        frame_bias = bias.repeat_interleave(frames, dim=0) if bias is not None else None
        ctx, _ = attend(block, q, k, v, scale, frame_bias, False)
        res_s = block.drop_path(block.attention.output(ctx))  # (B T, 1 + S, C)
        res_cls = res_s[:, 0].reshape(b, frames, c).mean(dim=1)  # the CLS's update: the mean over frames
        res_s = res_s[:, 1:].reshape(b, frames, s, c).transpose(1, 2).reshape(b, s, frames * c)
        out = torch.cat([res_cls.repeat(1, frames)[:, None], res_t.reshape(b, s, frames * c) + res_s], dim=1)
        if not want_info:
            return out, None
        h, d = q.shape[1], q.shape[-1]  # tube logits = the frames' mean spatial logits
        q_tube = (q * scale).reshape(b, frames, h, n, d).permute(0, 2, 3, 1, 4).reshape(b, h, n, frames * d) / frames
        k_tube = k.reshape(b, frames, h, n, d).permute(0, 2, 3, 1, 4).reshape(b, h, n, frames * d)
        return out, AttentionInfo(q=q_tube.detach(), k=k_tube.detach())

    # ---------------------------------------------------------------- model level
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """CLS pooling: nothing to change; transformers' own checkpointing is handed over while merging."""
        return hf_checkpointing_handover(encoder, encoder.encoder, encoder.encoder.layer)


__all__ = ["HFTimesformer", "from_tubes", "to_tubes"]
