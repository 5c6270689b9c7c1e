"""UMT vision encoder (Unmasked Teacher, Li et al. 2023): ViT with 3-D patch embedding, no CLS token.

Module names follow the official checkpoints: ``VisionTransformer`` is ``vision_encoder`` (``encoder.*`` +
``pool_norm.*``); ``VisionEncoder`` is its ``encoder`` (patch_embed, blocks, norm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...merging import AttentionInfo, LayerMerge, MergeableEncoder, MergeState
from ...ops import ATTENTION_MODES, attention


@dataclass
class VisionConfig:
    """UMT vision encoder hyper-parameters. ckpt_num_frames: frames the position table was trained with
    (interpolated linearly in time to the input's frames when set and different)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 1
    img_size: int = 224
    num_frames: int = 12
    ckpt_num_frames: int | None = None
    drop_path_rate: float = 0.0
    attention: str = "fused"

    @classmethod
    def vit_b16(cls, **kw: object) -> "VisionConfig":
        return cls(**kw)

    @classmethod
    def vit_l16(cls, **kw: object) -> "VisionConfig":
        return cls(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kw})

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2


def sincos_table(num_positions: int, dim: int) -> Tensor:
    """1-D sin-cos table (num_positions, dim): angle(n, j) = n / 10000^(2 floor(j/2) / dim); sin even j, cos odd."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    table = pos / np.power(10000, 2 * (j // 2) / dim)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.from_numpy(table).float()


def position_table(frames: int, patches_per_frame: int, dim: int, ckpt_frames: int | None = None) -> Tensor:
    """Position embedding (1, frames * P, dim); built for ckpt_frames and interpolated in time if they differ."""
    if ckpt_frames is None or ckpt_frames == frames:
        return sincos_table(frames * patches_per_frame, dim)[None]
    table = sincos_table(ckpt_frames * patches_per_frame, dim).reshape(ckpt_frames, patches_per_frame, dim)
    table = table.permute(1, 2, 0)  # (P, dim, T_ckpt)
    table = F.interpolate(table, size=frames, mode="linear")
    return table.permute(2, 0, 1).reshape(1, frames * patches_per_frame, dim)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class PatchEmbed(nn.Module):
    """(B, 3, T, H, W) -> (B, T/tubelet * (H/p) * (W/p), D), flattened in (t, h, w) order."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """qkv without bias + learnable q_bias and v_bias (k bias fixed 0), scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int, mode: str = "fused") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.mode = mode
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None = None, want_info: bool = False) -> tuple[Tensor, AttentionInfo | None]:
        """x: (B, N, C); bias: (B, 1, 1, N) log-size or None -> ((B, N, C), AttentionInfo if want_info)."""
        b, n, c = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out, probs = attention(q, k, v, self.scale, bias, self.mode, need_probs=want_info)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if not want_info:
            return out, None
        if probs is not None:
            return out, AttentionInfo(probs=probs, k=k.detach())
        return out, AttentionInfo(q=(q * self.scale).detach(), k=k.detach())


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block; the merge slot runs between the attention residual and the MLP (as vid-TLDR / ToMe)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, attention: str = "fused") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attention)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.merge: LayerMerge | None = None
        self.grad_checkpointing = False

    def _attn_branch(self, x: Tensor, bias: Tensor | None, want_info: bool) -> tuple[Tensor, AttentionInfo | None]:
        out, info = self.attn(self.norm1(x), bias, want_info)
        return self.drop_path(out), info

    def _mlp_branch(self, x: Tensor) -> Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, state: MergeState | None = None) -> Tensor:
        """x: (B, N, C) -> (B, N', C); state carries sizes / sources across the blocks of one forward.

        With ``grad_checkpointing`` (training), the attention and MLP branches are recomputed in the backward pass;
        the merge step runs outside them, so the MergeState is updated exactly once per forward.
        """
        state = state if state is not None else MergeState()
        want_info = self.merge is not None and self.merge.needs_attention
        bias = state.attention_bias()
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            out, info = checkpoint(self._attn_branch, x, bias, want_info, use_reentrant=False)
        else:
            out, info = self._attn_branch(x, bias, want_info)
        x = x + out
        if self.merge is not None:
            x = self.merge(x, state, info)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            x = x + checkpoint(self._mlp_branch, x, use_reentrant=False)
        else:
            x = x + self._mlp_branch(x)
        state.tokens_per_layer.append(x.shape[1])
        return x


class VisionEncoder(MergeableEncoder):
    """Patch embedding + sin-cos positions + blocks + final norm: (B, 3, T, H, W) -> (B, N', D)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, dpr[i], cfg.attention) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self._pos_cache: dict[tuple[int, str], Tensor] = {}

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_frames // self.cfg.tubelet_size * self.cfg.patches_per_frame

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's attention and MLP in the backward pass (less activation memory, ~1/3 more time)."""
        for block in self.blocks:
            block.grad_checkpointing = enable

    def set_attention(self, mode: str) -> None:
        """Switch every block between the "fused" and the "explicit" (reference) attention."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        for block in self.blocks:
            block.attn.mode = mode

    def position_embedding(self, frames: int, device: torch.device) -> Tensor:
        key = (frames, str(device))
        if key not in self._pos_cache:
            ckpt = self.cfg.ckpt_num_frames // self.cfg.tubelet_size if self.cfg.ckpt_num_frames else None
            table = position_table(frames, self.cfg.patches_per_frame, self.cfg.embed_dim, ckpt)
            self._pos_cache[key] = table.to(device)
        return self._pos_cache[key]

    def forward(self, video: Tensor, state: MergeState | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> tokens (B, N', D) after the final norm."""
        size = self.cfg.img_size
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[-2:] != (size, size):
            raise ValueError(f"expected video (B, 3, T, {size}, {size}), got {tuple(video.shape)}")
        if video.shape[2] % self.cfg.tubelet_size:
            raise ValueError(f"{video.shape[2]} frames is not a multiple of tubelet_size {self.cfg.tubelet_size}")
        state = state if state is not None else self.new_merge_state()
        x = self.patch_embed(video)
        frames = video.shape[2] // self.cfg.tubelet_size
        x = x + self.position_embedding(frames, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, state)
        return self.norm(x)


class VisionTransformer(nn.Module):
    """The official ``vision_encoder``: encoder + mean pooling + pool_norm."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionEncoder(cfg)
        self.pool_norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.apply(_init_weights)

    def forward(self, video: Tensor, return_state: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, MergeState]:
        """video: (B, 3, T, H, W) -> (tokens (B, N', D), pooled (B, D)) [, MergeState].

        Pooling is the UNWEIGHTED mean over the remaining tokens (sizes ignored), as official.
        """
        state = self.encoder.new_merge_state()
        tokens = self.encoder(video, state)
        pooled = self.pool_norm(tokens.mean(dim=1))
        return (tokens, pooled, state) if return_state else (tokens, pooled)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
