"""Reductions that act before the first block: run-length tokenization (RLT) and the uniform frame / resolution
downsampling baselines (VTC-Bench, arXiv 2510.07143).

They are methods of the method table (``METHODS``) whose class attribute ``position`` is ``INPUT`` ("input"): an
encoder with an input hook (``supports_input_reduction``: our ``backbones.layers.ViTEncoder`` and its frame-wise
subclass) calls ``prepare`` on the video before the patch embedding and ``reduce`` on the embedded tokens; the blocks
get no merge slot. r (the per-block schedule) is not used by them: ``patch`` installs them whatever r says and records
an all-zero schedule (they are not combined with a block method). Grafted transformers / timm / open_clip encoders
have no input hook: ``patch`` refuses these methods on them with a ValueError.

Token counts: ``tokens_entering(encoder, video)`` gives the tokens per batch row entering the first block (every
block keeps them); frame_stride and resize know it from the shapes alone, RLT (``content_dependent``) only from the
video's pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matching import DropPlan, MergePlan
from .methods import MergeMethod, register_method
from .state import AttentionInfo, MergeState, TokenGrid

INPUT = "input"


def is_input_method(method: MergeMethod | type[MergeMethod] | None) -> bool:
    """True for a method (class or instance) that reduces the input before the first block."""
    return method is not None and getattr(method, "position", None) == INPUT


class InputReduction(MergeMethod):
    """Base class of the reductions before the first block (see the module docstring).

    The encoder calls ``prepare(encoder, video)`` -> the video it embeds (strided, resized), then
    ``reduce(encoder, video, x, state)`` with that video and its tokens ``x`` (rows, prefix + tokens, D) after the
    positions were added, and uses the tokens it returns. ``content_dependent``: the count depends on the pixels.
    """

    position = INPUT
    content_dependent = False

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> MergePlan | DropPlan:
        raise ValueError(f"{self.name!r} reduces the input before the first block: it has no per-block plan")

    def prepare(self, encoder: nn.Module, video: Tensor) -> Tensor:
        """video (B, 3, T, H, W) -> the video the encoder embeds (default: unchanged)."""
        return video

    def input_size(self, encoder: nn.Module) -> int:
        """The side in pixels of the video ``prepare`` gives (default: the encoder's configured one)."""
        return encoder.cfg.img_size

    def reduce(self, encoder: nn.Module, video: Tensor, x: Tensor, state: MergeState) -> Tensor:
        """x (rows, prefix + N, D) tokens of ``video`` (the prepared one) -> the tokens entering the first block;
        updates state (size, count, source, grid). Default: unchanged (sources traced from these tokens)."""
        state.init_source(x)
        return x

    def tokens_entering(self, encoder: nn.Module, video: Tensor | None = None) -> int | None:
        """Tokens per batch row entering the first block for ``video`` (default: the encoder's configured input);
        None when the count depends on pixels and no video is given."""
        cfg = encoder.cfg
        rows_are_frames = getattr(encoder, "framewise", False)
        frames = video.shape[2] if video is not None else (encoder.video_frames if rows_are_frames else cfg.num_frames)
        frames = self.frames_after(frames)
        side = self.input_size(encoder) // cfg.patch_size
        per_frame = side * side
        return encoder.num_prefix_tokens + per_frame * (1 if rows_are_frames else frames // cfg.tubelet_size)

    def frames_after(self, frames: int) -> int:
        """Frames of the prepared video for an input of ``frames`` frames (default: unchanged)."""
        return frames


@register_method
class FrameStride(InputReduction):
    """Uniform temporal downsampling: keep every ``stride``-th frame (frames 0, stride, 2 stride, ...), as a clip
    sampled at a lower rate. The encoder embeds the shorter clip with its positions for that many frames (the
    sin-cos table rebuilt, or the checkpoint's table interpolated in time when ``ckpt_num_frames`` is set, as UMT
    does), so this equals running the model on ``video[:, :, ::stride]``. Frame-wise encoders get fewer frame rows.
    """

    name = "frame_stride"

    def __init__(self, stride: int = 2, proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"frame_stride stride must be a whole number >= 1, got {stride!r}")
        self.stride = stride

    def frames_after(self, frames: int) -> int:
        return math.ceil(frames / self.stride)

    def check_frames(self, encoder: nn.Module, frames: int) -> int:
        """The frames kept of ``frames``, or a ValueError when they are not whole tubelets of ``encoder``."""
        tubelet = encoder.cfg.tubelet_size
        kept = self.frames_after(frames)
        if kept % tubelet:
            raise ValueError(f"frame_stride stride={self.stride} keeps {kept} of {frames} frames, not a multiple of "
                             f"the tubelet size {tubelet}")
        return kept

    def tokens_entering(self, encoder: nn.Module, video: Tensor | None = None) -> int | None:
        if not getattr(encoder, "framewise", False):
            self.check_frames(encoder, video.shape[2] if video is not None else encoder.cfg.num_frames)
        return super().tokens_entering(encoder, video)

    def prepare(self, encoder: nn.Module, video: Tensor) -> Tensor:
        self.check_frames(encoder, video.shape[2])
        return video[:, :, :: self.stride]

    def __repr__(self) -> str:
        return f"FrameStride(stride={self.stride})"


@register_method
class Resize(InputReduction):
    """Uniform spatial downsampling: resize every frame to ``size`` x ``size`` pixels (bilinear, antialiased, as
    torchvision's Resize on tensors) before the patch embedding. Positions are adapted as the original codebases
    do for another input size: a sin-cos table is rebuilt for the new patch count (VideoMAE's and UMT's
    ``get_sinusoid_encoding_table(num_patches)``), learned positions (CLIP) are bicubic-interpolated on the patch
    grid, prefix kept (open_clip's ``resize_pos_embed``). size: pixels, a multiple of the patch size; default
    ``scale`` x the configured size rounded down to whole patches (at least one patch).
    """

    name = "resize"

    def __init__(self, size: int | None = None, scale: float = 0.75, proportional_attention: bool = True,
                 protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"resize size must be a whole number of pixels >= 1, got {size!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ValueError(f"resize scale must be in (0, 1], got {scale!r}")
        self.size = size
        self.scale = float(scale)

    def input_size(self, encoder: nn.Module) -> int:
        patch = encoder.cfg.patch_size
        if self.size is None:
            return max(patch, int(encoder.cfg.img_size * self.scale) // patch * patch)
        if self.size % patch:
            raise ValueError(f"resize size={self.size} is not a multiple of the patch size {patch}")
        return self.size

    def prepare(self, encoder: nn.Module, video: Tensor) -> Tensor:
        size = self.input_size(encoder)
        if video.shape[-2:] == (size, size):
            return video
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return frames.reshape(b, t, c, size, size).transpose(1, 2)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, scale={self.scale})"


def rlt_keep_mask(video: Tensor, threshold: float, tubelet: int, patch: int) -> Tensor:
    """RLT's static-token test (``batched_find_idxs_to_keep`` of rccchoudhury/rlt): (B, 3, T, H, W) -> (B, T', P)
    bool, True where the tubelet is kept. The mean over the patch's pixels and channels of |last frame of tubelet
    t - first frame of tubelet t - 1| must exceed ``threshold`` (strictly); the first tubelet is always kept. The
    video is the normalised model input (the authors' threshold 0.1 is in ImageNet-normalised units)."""
    x = video.float()
    diffs = (x[:, :, 2 * tubelet - 1:: tubelet] - x[:, :, : -tubelet: tubelet]).abs()
    score = F.avg_pool3d(diffs, (1, patch, patch)).mean(dim=1)  # (B, T' - 1, H/p, W/p)
    keep = score > threshold
    first = torch.ones_like(keep[:, :1])
    return torch.cat([first, keep], dim=1).flatten(2)


def run_lengths(keep: Tensor) -> Tensor:
    """keep (B, T', P) -> (B, T', P) int64: for a kept tubelet, the tubelets from it to the next kept one at the same
    spatial position (or to the end): its run length; 0 where not kept."""
    t = keep.shape[1]
    steps = torch.arange(t, device=keep.device)[None, :, None]
    nxt = torch.where(keep, steps, torch.full_like(steps, t)).expand_as(keep)
    nxt = torch.cat([nxt[:, 1:], torch.full_like(nxt[:, :1], t)], dim=1)  # the first kept tubelet strictly after
    nxt = nxt.flip(1).cummin(dim=1).values.flip(1)
    return torch.where(keep, nxt - steps, torch.zeros_like(nxt))


def run_owner(keep: Tensor) -> Tensor:
    """keep (B, T', P) -> (B, T', P) int64: the time step of the kept tubelet whose run each tubelet belongs to."""
    steps = torch.arange(keep.shape[1], device=keep.device)[None, :, None]
    return torch.where(keep, steps, torch.zeros_like(steps)).cummax(dim=1).values


@register_method
class RLT(InputReduction):
    """Run-Length Tokenization (Choudhury et al., NeurIPS 2024; rccchoudhury/rlt): before the encoder, tubelets that
    repeat the same spatial patch of the previous tubelet (``rlt_keep_mask``: mean absolute difference at most
    ``threshold``, default the authors' 0.1 in normalised units) are removed; the kept tokens keep their own
    positions. Each kept token stands for its run (itself and the removed repeats after it): with
    ``lengths_as_size`` (default) its MergeState.size is the run length, so proportional attention (log size) and
    size-weighted pooling count the run, the training-free form of the authors' learned length embedding (which
    their released configs switch off: ``encode_length: False``; ``lengths_as_size=False`` is that literal
    inference, every kept token of size 1).

    Rows keep different numbers of tokens: the kept tokens are left-packed, padding (size 0) at the end of each row
    and ``MergeState.count`` (B,) set (None when no row has padding), which the attention masks. On a frame-wise
    encoder the rows are frames: frame t keeps the patches that changed since frame t - 1 (frame 0 keeps all, so a
    padded batch is as wide as the input; the saving needs packing). The grid is kept only when nothing was
    removed. On the meta device (FLOPs by shapes) there are no pixels to compare: RLT raises unless
    ``forced_count`` is set (``vidtldr_pl.flops.input.video_flops`` sets it from the real video).
    """

    name = "rlt"
    content_dependent = True

    def __init__(self, threshold: float = 0.1, lengths_as_size: bool = True, proportional_attention: bool = True,
                 protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"rlt threshold must be a number >= 0, got {threshold!r}")
        if not isinstance(lengths_as_size, bool):
            raise ValueError(f"rlt lengths_as_size must be true or false, got {lengths_as_size!r}")
        self.threshold = float(threshold)
        self.lengths_as_size = lengths_as_size
        self.forced_count: int | None = None

    def keep_mask(self, encoder: nn.Module, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (rows, P) bool: the kept patch tokens of each batch row of ``encoder``."""
        cfg = encoder.cfg
        framewise = getattr(encoder, "framewise", False)
        keep = rlt_keep_mask(video, self.threshold, 1 if framewise else cfg.tubelet_size, cfg.patch_size)
        return keep.flatten(0, 1) if framewise else keep.flatten(1)

    def tokens_entering(self, encoder: nn.Module, video: Tensor | None = None) -> int | None:
        if video is None:
            return None
        return encoder.num_prefix_tokens + int(self.keep_mask(encoder, video).sum(dim=1).max())

    def reduce(self, encoder: nn.Module, video: Tensor, x: Tensor, state: MergeState) -> Tensor:
        prefix = encoder.num_prefix_tokens
        if x.is_meta or video.is_meta:
            if self.forced_count is None:
                raise ValueError("rlt keeps tokens by their pixels, which the meta device does not hold: count its "
                                 "FLOPs with vidtldr_pl.flops.input.video_flops(encoder, video)")
            return x[:, : prefix + self.forced_count]
        framewise = getattr(encoder, "framewise", False)
        cfg = encoder.cfg
        grid_keep = rlt_keep_mask(video, self.threshold, 1 if framewise else cfg.tubelet_size, cfg.patch_size)
        lengths = run_lengths(grid_keep)  # (B, T', P)
        owner = run_owner(grid_keep)
        if framewise:  # rows are frames: each kept patch stands for itself in its own row
            keep, lengths = grid_keep.flatten(0, 1), grid_keep.flatten(0, 1).long()
            owner_flat = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
        else:
            keep, lengths = grid_keep.flatten(1), lengths.flatten(1)
            per_frame = grid_keep.shape[2]
            owner_flat = (owner * per_frame + torch.arange(per_frame, device=owner.device)).flatten(1)
        rows, m = keep.shape
        kept = keep.sum(dim=1)  # (rows,)
        width = int(kept.max())
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]  # kept first, in input order
        real = torch.arange(width, device=x.device)[None, :] < kept[:, None]  # (rows, width)
        patches = x[:, prefix:].gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
        patches = patches * real[..., None].to(patches.dtype)
        out = torch.cat([x[:, :prefix], patches], dim=1)
        count = kept + prefix
        ones = torch.ones(rows, prefix, dtype=torch.float32, device=x.device)
        run = lengths.gather(1, order).float() * real
        padded = bool((kept < width).any())
        if self.lengths_as_size or padded:  # literal RLT: size 1 for every real token, 0 for padding
            state.size = torch.cat([ones, run if self.lengths_as_size else real.float()], dim=1)[..., None]
        state.count = count if padded else None
        if width < m or padded:  # tokens removed: the grid no longer tiles the rows
            state.grid = None
        if state.trace_source:  # each kept token holds its run: the input tokens whose owner it is
            rank = keep.long().cumsum(dim=1) - 1  # packed position of every kept token
            holder = rank.gather(1, owner_flat)  # (rows, M): packed position of the token holding each input token
            source = torch.zeros(rows, prefix + width, prefix + m, dtype=torch.float32, device=x.device)
            first = torch.arange(prefix, device=x.device)
            source[:, first, first] = 1.0
            cols = torch.arange(m, device=x.device).expand(rows, m)
            source[torch.arange(rows, device=x.device)[:, None], prefix + holder, prefix + cols] = 1.0
            state.source = source
        return out

    def __repr__(self) -> str:
        return f"RLT(threshold={self.threshold}, lengths_as_size={self.lengths_as_size})"


__all__ = ["INPUT", "RLT", "FrameStride", "InputReduction", "Resize", "is_input_method", "rlt_keep_mask",
           "run_lengths", "run_owner"]
