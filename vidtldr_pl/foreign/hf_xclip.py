"""transformers X-CLIP's vision tower: ``XCLIPVisionModel``, alone or inside ``XCLIPModel``: merging in place.

The tower is a per-frame CLIP ViT (the frames are the batch, so merging, sizes and ``tokens_per_layer`` are per frame,
as for our frame-wise models). Each ``XCLIPVisionEncoderLayer`` first builds a message token per frame (``message_fc``
of the frame's CLS, then ``message_attn`` across the frames of the video), appends it to the frame's tokens for the
self-attention only, and drops it before the MLP. While merging: the message tokens are built as written (from the
CLS, which never merges); the appended message token gets size 1 (no bias) in the proportional attention; what a
method reads of the attention is the frame tokens' attention among themselves (the message token's row and column
left out, rows renormalised: the same in explicit and fused mode). Attention: "explicit" for
``attn_implementation="eager"``, "fused" (sdpa) otherwise. Prefix token: the CLS. Tokens: 1 + (image / patch)^2.

Pooling: the tower's ``pooler_output`` is the CLS (nothing to change). ``XCLIPModel`` also feeds the patch tokens to
its video-specific prompt generator as the mean over frames of each patch position; merged tokens no longer sit at
patch positions, so while merging the model traces sources (its forward switches ``trace_source`` on) and
the prompt features are unmerged back to the patch grid: each patch reads the merged token that holds it, and the
mean over frames skips frames where a drop method removed it (a patch no frame holds reads the video's
size-weighted mean token). Unmerged (no merge), nothing changes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..merging.state import AttentionInfo, MergeState
from .core import attend, head_split, register_family
from .hf_common import TransformersAdapter, hf_checkpointing_handover


def frame_tokens_only(info: AttentionInfo | None, n: int) -> AttentionInfo | None:
    """The attention among the first n tokens: probs (B, H, M, M) -> renormalised (B, H, n, n); q / k sliced."""
    if info is None:
        return None
    if info.probs is not None:
        probs = info.probs[..., :n, :n]
        return AttentionInfo(probs=probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12), k=info.k[:, :, :n])
    return AttentionInfo(q=info.q[:, :, :n], k=info.k[:, :, :n])


def unmerge_to_patches(tokens: Tensor, state: MergeState, frames: int) -> Tensor:
    """tokens (B T, N' - 1, C) merged patch tokens of one forward -> (B T, P, C) one per patch (P = N0 - 1) with
    ``state.source`` (B T, N', N0): each patch reads the token holding it; a patch a frame lost (dropped) reads its
    mean over the frames that hold it, or the video's size-weighted mean token where none does."""
    held_by = state.source[:, 1:, 1:].to(tokens.dtype)  # (B T, N' - 1, P): 1 where token j holds patch p
    count = held_by.sum(dim=1)[..., None]  # (B T, P, 1)
    grid = torch.einsum("bjp,bjc->bpc", held_by, tokens) / count.clamp_min(1)
    held = (count > 0).to(tokens.dtype)
    bt, p, c = grid.shape
    per_video, held_v = grid.reshape(bt // frames, frames, p, c), held.reshape(bt // frames, frames, p, 1)
    over_frames = (per_video * held_v).sum(dim=1, keepdim=True) / held_v.sum(dim=1, keepdim=True).clamp_min(1)
    size = state.size[:, 1:].to(tokens.dtype).reshape(bt // frames, frames, -1, 1)
    video_mean = (tokens.reshape(bt // frames, frames, -1, c) * size).sum(dim=(1, 2)) / size.sum(dim=(1, 2))
    anywhere = held_v.amax(dim=1, keepdim=True)
    fill = anywhere * over_frames + (1 - anywhere) * video_mean[:, None, None]
    return (held_v * per_video + (1 - held_v) * fill).reshape(bt, p, c)


@register_family
class HFXCLIPVision(TransformersAdapter):
    name = "transformers XCLIPVisionModel (alone or in XCLIPModel)"
    classes = ("transformers.models.x_clip.modeling_x_clip.XCLIPVisionModel",)
    pooling = ("pooler_output is the CLS; XCLIPModel's prompt features (patch tokens averaged over frames) are "
               "unmerged to the patch grid through the traced sources")

    # ---------------------------------------------------------------- the encoder
    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layers

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.encoder

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 1

    def num_tokens(self, encoder: nn.Module) -> int | None:
        return int(encoder.embeddings.num_patches) + 1


    # ---------------------------------------------------------------- one block
    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.self_attn
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        return head_split(q, attn.num_heads), head_split(k, attn.num_heads), head_split(v, attn.num_heads), attn.scale

    def attn_branch(self, block: nn.Module, x: Tensor, bias: Tensor | None, want_info: bool
                    ) -> tuple[Tensor, AttentionInfo | None]:
        """x (B T, N, C) -> (what the self-attention adds to the N frame tokens, their AttentionInfo); the message
        token joins the attention and is dropped."""
        bt, n, c = x.shape
        frames = block.num_frames
        msg = block.message_fc(x[:, 0, :]).view(bt // frames, frames, c)
        msg = msg + block.drop_path(block.message_attn(block.message_ln(msg))[0])
        h = torch.cat([x, msg.view(bt, 1, c)], dim=1)
        if bias is not None:
            bias = torch.cat([bias, bias.new_zeros(bt, 1, 1, 1)], dim=-1)  # the message token: size 1
        q, k, v, scale = self.qkv(block, block.layer_norm1(h))
        ctx, info = attend(block, q, k, v, scale, bias, want_info)
        return block.self_attn.out_proj(ctx)[:, :n], frame_tokens_only(info, n)

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.mlp(block.layer_norm2(x))

    # ---------------------------------------------------------------- model level
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """XCLIPModel: trace sources while merging, and unmerge the prompt features (after
        ``prompts_visual_layernorm``) to the patch grid."""
        handles = hf_checkpointing_handover(encoder, encoder.encoder, encoder.encoder.layers)
        for module in model.modules():
            if getattr(module, "vision_model", None) is encoder and hasattr(module, "prompts_visual_layernorm"):
                handles += _prompt_hooks(module, encoder)
        return handles


def _prompt_hooks(xclip: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
    frames = encoder.config.num_frames

    def trace_sources(module: nn.Module, args: tuple) -> None:
        settings = encoder.merge_settings
        if settings.method is not None:
            settings.trace_source = True

    def unmerge(module: nn.Module, args: tuple, output: Tensor) -> Any:
        state = encoder.last_merge_state
        if state is None or state.source is None or state.size is None or state.size.shape[1] != output.shape[1] + 1:
            return None
        return unmerge_to_patches(output, state, frames)

    return [xclip.register_forward_pre_hook(trace_sources),
            xclip.prompts_visual_layernorm.register_forward_hook(unmerge)]


__all__ = ["HFXCLIPVision", "frame_tokens_only", "unmerge_to_patches"]
