"""Shared ViT layers with the merge slot: every backbone (UMT, VideoMAE, ...) is a ``ViTConfig`` over these.

Module names follow the official UMT / VideoMAE checkpoints (``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv,
attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), so those load without renaming;
other layouts (CLIP, HF) are mapped by their backbone's converter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..merging import AttentionInfo, LayerMerge, MergeableEncoder, MergeState, TokenGrid
from ..merging.block import merging_block_forward
from ..merging.input_reduction import InputReduction, is_input_method
from ..ops import ATTENTION_MODES, attention
from .interfaces import VideoEncoder

QKV_BIAS = ("qv", "qkv", "none")
ACTIVATIONS = ("gelu", "quick_gelu")
POS_EMBEDS = ("sincos", "learned", "none")


@dataclass
class ViTConfig:
    """A video ViT. Tokens: T/tubelet x (H/p) x (W/p) patches in (t, h, w) order, after ``class_token`` prefix tokens.

    qkv_bias: "qv" (q and v biases, k bias fixed 0: UMT, VideoMAE), "qkv" (a full bias: CLIP) or "none".
    pos_embed: "sincos" (fixed 1-D table over all patches), "learned" (a parameter, prefix included) or "none".
    ckpt_num_frames: frames the sin-cos table was trained with (interpolated linearly in time when they differ).
    pre_norm: a LayerNorm before the blocks (CLIP's ln_pre); final_norm: the LayerNorm after them.
    attention: "fused" (SDPA), "explicit" (the official reference path) or "flex".
    """

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
    qkv_bias: str = "qv"
    act: str = "gelu"
    norm_eps: float = 1e-6
    patch_bias: bool = True
    class_token: bool = False
    pos_embed: str = "sincos"
    pre_norm: bool = False
    final_norm: bool = True

    def __post_init__(self) -> None:
        for name, value, allowed in (("qkv_bias", self.qkv_bias, QKV_BIAS), ("act", self.act, ACTIVATIONS),
                                     ("pos_embed", self.pos_embed, POS_EMBEDS), ("attention", self.attention, ATTENTION_MODES)):
            if value not in allowed:
                raise ValueError(f"ViTConfig.{name} must be one of {allowed}, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}")

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_patches(self) -> int:
        return self.num_frames // self.tubelet_size * self.patches_per_frame

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token)


def sincos_table(num_positions: int, dim: int) -> Tensor:
    """1-D sin-cos table (num_positions, dim): angle(n, j) = n / 10000^(2 floor(j/2) / dim); sin even j, cos odd."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    table = pos / np.power(10000, 2 * (j // 2) / dim)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.from_numpy(table).float()


def resize_learned_positions(pos: Tensor, prefix: int, frames: int, grid: int, new_frames: int, new_grid: int) -> Tensor:
    """Learned positions (1, prefix + frames * grid^2, D) -> (1, prefix + new_frames * new_grid^2, D), prefix kept:
    linear in time (UMT's ``interpolate_pos_embed``), then bicubic on each frame's patch grid (align_corners False,
    antialiased: open_clip's ``resize_pos_embed`` for another image size)."""
    if (new_frames, new_grid) == (frames, grid):
        return pos
    dim = pos.shape[-1]
    patches = pos[:, prefix:].float().reshape(frames, grid * grid, dim)
    if new_frames != frames:
        patches = F.interpolate(patches.permute(1, 2, 0), size=new_frames, mode="linear").permute(2, 0, 1)
    if new_grid != grid:
        patches = patches.reshape(new_frames, grid, grid, dim).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
        patches = patches.permute(0, 2, 3, 1)
    patches = patches.reshape(1, new_frames * new_grid * new_grid, dim).to(pos.dtype)
    return torch.cat([pos[:, :prefix], patches], dim=1)


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
    """(B, 3, T, H, W) -> (B, T/tubelet * (H/p) * (W/p), D), flattened in (t, h, w) order (a 2-D embedding is
    tubelet 1)."""

    def __init__(self, embed_dim: int, patch_size: int, tubelet_size: int = 1, bias: bool = True) -> None:
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=k, stride=k, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; qkv_bias "qv" (learnable q_bias / v_bias, k bias 0), "qkv" or "none"."""

    def __init__(self, dim: int, num_heads: int, mode: str = "fused", qkv_bias: str = "qv") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        if qkv_bias not in QKV_BIAS:
            raise ValueError(f"qkv_bias must be one of {QKV_BIAS}, got {qkv_bias!r}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.mode = mode
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias == "qkv")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def _qkv_bias(self) -> Tensor | None:
        if self.q_bias is None:
            return self.qkv.bias
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))

    def forward(self, x: Tensor, bias: Tensor | None = None, want_info: bool = False) -> tuple[Tensor, AttentionInfo | None]:
        """x: (B, N, C); bias: (B, 1, 1, N) log-size or None -> ((B, N, C), AttentionInfo if want_info)."""
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias()).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out, probs = attention(q, k, v, self.scale, bias, self.mode, need_probs=want_info)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if not want_info:
            return out, None
        if probs is not None:
            return out, AttentionInfo(probs=probs, k=k.detach())
        return out, AttentionInfo(q=(q * self.scale).detach(), k=k.detach())


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x) (OpenAI CLIP)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block with the merge slot: between the attention residual and the MLP (as vid-TLDR / ToMe), or
    after the MLP residual for methods whose ``position`` is "mlp"."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 attention: str = "fused", qkv_bias: str = "qv", act: str = "gelu", norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, attention, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.merge: LayerMerge | None = None
        self.grad_checkpointing = False

    def _attn_branch(self, x: Tensor, bias: Tensor | None, want_info: bool) -> tuple[Tensor, AttentionInfo | None]:
        out, info = self.attn(self.norm1(x), bias, want_info)
        return self.drop_path(out), info

    def _mlp_branch(self, x: Tensor) -> Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, state: MergeState | None = None) -> Tensor:
        """x: (B, N, C) -> (B, N', C) (``merging.block.merging_block_forward``)."""
        return merging_block_forward(self, x, state if state is not None else MergeState())


class ViTEncoder(MergeableEncoder):
    """Patch embedding [+ CLS] + positions [+ ln_pre] + blocks [+ final norm]: (B, 3, T, H, W) -> (B, N', D).

    The merge contract: ``blocks`` with a merge slot, ``num_prefix_tokens`` (the CLS token, never merged), a
    fresh MergeState threaded through the blocks of each forward.
    """

    implements = (VideoEncoder,)
    #: ``merging.patch`` installs input reductions (RLT, frame_stride, resize) only on encoders that declare this
    supports_input_reduction = True
    #: rows are videos (prefix + T x S tokens); ``framewise.FrameViTEncoder``: rows are frames
    framewise = False

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.embed_dim, cfg.patch_size, cfg.tubelet_size, cfg.patch_bias)
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + cfg.num_prefix_tokens, cfg.embed_dim))
        self.norm_pre = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, dpr[i], cfg.attention, cfg.qkv_bias, cfg.act, cfg.norm_eps)
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self._pos_cache: dict[tuple[int, int, str], Tensor] = {}

    @property
    def num_prefix_tokens(self) -> int:
        return self.cfg.num_prefix_tokens

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_patches + self.cfg.num_prefix_tokens

    def example_input(self, batch_size: int = 1, device: torch.device | str | None = None) -> Tensor:
        """A zero video of the configured size: (batch_size, 3, T, H, W)."""
        c = self.cfg
        return torch.zeros(batch_size, 3, c.num_frames, c.img_size, c.img_size, device=device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's attention and MLP in the backward pass (less activation memory, ~1/3 more time)."""
        for block in self.blocks:
            block.grad_checkpointing = enable

    def set_attention(self, mode: str) -> None:
        """Switch every block between "fused", "explicit" (the reference path) and "flex" attention."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        for block in self.blocks:
            block.attn.mode = mode

    def position_embedding(self, frames: int, device: torch.device, per_frame: int | None = None) -> Tensor:
        """The sin-cos table for ``frames`` (tubelets) of ``per_frame`` patches (default: the configured input's) as
        (1, frames * P, D), cached per device: a 1-D table over every patch, rebuilt for another patch count as
        VideoMAE / UMT build theirs for their input size (UMT's temporal interpolation kept)."""
        per_frame = per_frame or self.cfg.patches_per_frame
        key = (frames, per_frame, str(device))
        if key not in self._pos_cache:
            ckpt = self.cfg.ckpt_num_frames // self.cfg.tubelet_size if self.cfg.ckpt_num_frames else None
            table = position_table(frames, per_frame, self.cfg.embed_dim, ckpt)
            self._pos_cache[key] = table.to(device)
        return self._pos_cache[key]

    def learned_positions(self, frames: int, size: int) -> Tensor:
        """The learned positions for ``frames`` tubelets of ``size`` x ``size`` pixels: the parameter itself for the
        configured input, else resampled (``resize_learned_positions``: linear in time, bicubic in space)."""
        grid, new_grid = self.cfg.img_size // self.cfg.patch_size, size // self.cfg.patch_size
        table_frames = (self.pos_embed.shape[1] - self.num_prefix_tokens) // (grid * grid)
        return resize_learned_positions(self.pos_embed, self.num_prefix_tokens, table_frames, grid, frames, new_grid)

    def embed(self, video: Tensor, size: int | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> tokens entering the first block (B, prefix + N, D). size: the frame side the
        video must have (default: the configured ``img_size``; another, a multiple of the patch size, adapts the
        positions: ``position_embedding`` / ``learned_positions``)."""
        size = size or self.cfg.img_size
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[-2:] != (size, size):
            raise ValueError(f"expected video (B, 3, T, {size}, {size}), got {tuple(video.shape)}")
        if size != self.cfg.img_size and size % self.cfg.patch_size:
            raise ValueError(f"frame size {size} is not a multiple of the patch size {self.cfg.patch_size}")
        if video.shape[2] % self.cfg.tubelet_size:
            raise ValueError(f"{video.shape[2]} frames is not a multiple of tubelet_size {self.cfg.tubelet_size}")
        x = self.patch_embed(video)
        per_frame = (size // self.cfg.patch_size) ** 2
        if self.cfg.pos_embed == "sincos":
            frames = video.shape[2] // self.cfg.tubelet_size
            x = x + self.position_embedding(frames, x.device, per_frame).to(x.dtype)
        if self.cfg.class_token:
            x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if self.cfg.pos_embed == "learned":
            pos = self.learned_positions(video.shape[2] // self.cfg.tubelet_size, size)
            if x.shape[1] != pos.shape[1]:
                raise ValueError(f"learned positions cover {pos.shape[1]} tokens, the input gives {x.shape[1]}")
            x = x + pos.to(x.dtype)
        return self.norm_pre(x)

    def token_grid(self, video: Tensor) -> TokenGrid:
        """The TokenGrid of the tokens ``embed(video)`` gives: T = frames / tubelet, S = patches per frame (of the
        video's own size)."""
        return TokenGrid(frames=video.shape[2] // self.cfg.tubelet_size,
                         per_frame=(video.shape[-1] // self.cfg.patch_size) ** 2, prefix=self.num_prefix_tokens)

    @property
    def input_reduction(self) -> InputReduction | None:
        """The merge setting's method when it reduces the input before the first block (RLT, frame_stride, resize;
        ``merging.input_reduction``), else None."""
        method = getattr(getattr(self, "merge_settings", None), "method", None)
        return method if is_input_method(method) else None

    def embed_input(self, video: Tensor, state: MergeState, rows_video: Tensor | None = None) -> Tensor:
        """The tokens entering the first block: ``embed`` of the (prepared) video, then the input reduction, which
        may update state (size, count, source, grid). video: the rows to embed (B, 3, T, H, W); rows_video: the clip
        they come from when it differs (a frame-wise encoder's (B, 3, T, H, W) video, its rows being frames)."""
        reduction = self.input_reduction
        size = reduction.input_size(self) if reduction is not None else None
        x = self.embed(video, size)
        if state.grid is None:
            state.grid = self.token_grid(video)
        if reduction is not None:
            x = reduction.reduce(self, rows_video if rows_video is not None else video, x, state)
        return x

    def forward(self, video: Tensor, state: MergeState | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> tokens (B, N', D) after the final norm. With an input reduction (RLT,
        frame_stride, resize) the rows may hold padding at their ends (``state.count``)."""
        state = state if state is not None else self.new_merge_state()
        reduction = self.input_reduction
        if reduction is not None:
            video = reduction.prepare(self, video)
        return self.run_blocks(self.embed_input(video, state), state)

    def run_blocks(self, x: Tensor, state: MergeState) -> Tensor:
        """x (B, N, D) tokens entering the first block -> (B, N', D) after the blocks and the final norm (padded rows
        when ``state.count`` is set; under ``state.batching`` "pack" the blocks run on the packed rows,
        ``MergeState.enter`` / ``leave``)."""
        x = state.enter(x)
        for block in self.blocks:
            x = block(x, state)
        return self.norm(state.leave(x))


def init_vit_weights(m: nn.Module) -> None:
    """Truncated-normal (0.02) linears with zero bias, unit LayerNorms (UMT / VideoMAE initialisation)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


__all__ = [
    "Attention", "Block", "DropPath", "Mlp", "PatchEmbed", "QuickGELU", "ViTConfig", "ViTEncoder", "init_vit_weights",
    "position_table", "resize_learned_positions", "sincos_table",
]
