"""Frame-wise encoders: an image ViT on the shared layers run on every frame of a video (ViFi-CLIP's image tower;
a timm or HF image ViT converted onto ``layers.ViTConfig`` the same way).

The frames are the encoder's batch, so merging, token sizes and ``tokens_per_layer`` are per frame, and prefix
(CLS) tokens are protected in every frame. ``per_video`` folds per-frame outputs back into clips.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..merging import MergeState, TokenGrid
from .layers import ViTConfig, ViTEncoder


class FrameViTEncoder(ViTEncoder):
    """A per-frame image ViT over videos: (B, 3, T, H, W) -> tokens (B x T, N', D), frame-major.

    ``cfg`` describes ONE frame (num_frames 1, tubelet 1); ``video_frames`` is the default clip length used by
    ``example_input``. Merging, sizes and tokens_per_layer are per frame (each frame is one row of the batch).
    """

    framewise = True

    def __init__(self, cfg: ViTConfig, video_frames: int) -> None:
        if cfg.num_frames != 1 or cfg.tubelet_size != 1:
            raise ValueError("FrameViTEncoder's ViTConfig describes one frame: num_frames 1, tubelet_size 1")
        super().__init__(cfg)
        self.video_frames = video_frames

    def example_input(self, batch_size: int = 1, device: torch.device | str | None = None) -> Tensor:
        """A zero video: (batch_size, 3, video_frames, H, W)."""
        s = self.cfg.img_size
        return torch.zeros(batch_size, 3, self.video_frames, s, s, device=device)

    def token_grid(self, video: Tensor) -> TokenGrid:
        """The TokenGrid of a clip (B, 3, T, H, W): frame-wise rows of prefix + (W / patch)^2 tokens, T frames."""
        return TokenGrid(frames=video.shape[2], per_frame=(video.shape[-1] // self.cfg.patch_size) ** 2,
                         prefix=self.num_prefix_tokens, framewise=True)

    def forward(self, video: Tensor, state: MergeState | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> (B x T, N', D) after the final norm (identity for CLIP: ln_post is the model's).
        An input reduction runs on the clip: frame_stride leaves B x T' rows, resize smaller frames, RLT compares
        each frame with the previous one (rows then hold padding at their ends, ``state.count``)."""
        if video.ndim != 5:
            raise ValueError(f"expected video (B, 3, T, H, W), got {tuple(video.shape)}")
        state = state if state is not None else self.new_merge_state()
        reduction = self.input_reduction
        if reduction is not None:
            video = reduction.prepare(self, video)
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, 1, h, w)
        if state.grid is None:
            state.grid = self.token_grid(video)
        return self.run_blocks(self.embed_input(frames, state, rows_video=video), state)


def per_video(frames: Tensor, batch_size: int) -> Tensor:
    """Per-frame rows (B x T, ...) in frame-major order -> (B, T, ...)."""
    return frames.reshape(batch_size, -1, *frames.shape[1:])


__all__ = ["FrameViTEncoder", "per_video"]
