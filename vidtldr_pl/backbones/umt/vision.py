"""UMT vision encoder (Unmasked Teacher, Li et al. 2023): the shared ViT with a 3-D patch embedding, no CLS token,
q/v biases and a fixed sin-cos table, then mean pooling + ``pool_norm``.

Module names follow the official checkpoints: ``VisionTransformer`` is ``vision_encoder`` (``encoder.*`` +
``pool_norm.*``); its ``encoder`` is the shared ``ViTEncoder`` (patch_embed, blocks, norm).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ...merging import MergeState
from ..layers import ViTConfig, ViTEncoder, init_vit_weights


@dataclass
class VisionConfig(ViTConfig):
    """UMT vision encoder hyper-parameters (ViTConfig with UMT's defaults: ViT-B/16, 12 frames, tubelet 1)."""

    @classmethod
    def vit_b16(cls, **kw: object) -> "VisionConfig":
        return cls(**kw)

    @classmethod
    def vit_l16(cls, **kw: object) -> "VisionConfig":
        return cls(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kw})


class VisionTransformer(nn.Module):
    """The official ``vision_encoder``: encoder + mean pooling + pool_norm."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)
        self.pool_norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.apply(init_vit_weights)

    def forward(self, video: Tensor, return_state: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, MergeState]:
        """video: (B, 3, T, H, W) -> (tokens (B, N', D), pooled (B, D)) [, MergeState].

        Pooling is the UNWEIGHTED mean over the remaining tokens (sizes ignored), as official; with per-video counts
        (``MergeState.count``) over each video's real tokens, and tokens (B, max count, D) hold padding at the end.
        """
        state = self.encoder.new_merge_state()
        tokens = self.encoder(video, state)
        pooled = self.pool_norm(state.mean_pool(tokens))  # tokens.mean(dim=1) unless rows hold different counts
        return (tokens, pooled, state) if return_state else (tokens, pooled)
