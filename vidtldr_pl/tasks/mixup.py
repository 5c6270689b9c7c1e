"""Mixup / CutMix on video batches with label-smoothed soft targets (VideoMAE's ``mixup.py``, timm's "batch" mode).

Pure torch + numpy. One draw per batch: with probability ``prob`` the batch is mixed with its reverse (``flip(0)``),
by CutMix with probability ``switch_prob`` when both are enabled (lam ~ Beta(cutmix_alpha)) and otherwise by Mixup
(lam ~ Beta(mixup_alpha)). CutMix pastes one box of the reversed batch over every frame (the last two dimensions)
and corrects lam to the pasted area. Targets: ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` with
``smooth(y) = one_hot(y) * (1 - s) + s / C``; loss: soft-target cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw: lam (weight of the original samples) and the CutMix box (y0, y1, x0, x1) or None."""

    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None


def draw_mix(height: int, width: int, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
             rng: np.random.Generator) -> MixDraw:
    """Draw Mixup / CutMix parameters for a batch of frames ``height`` x ``width`` (timm's order of draws)."""
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return MixDraw()
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    if not use_cutmix:
        return MixDraw(lam)
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return MixDraw(lam, (y0, y1, x0, x1))


def apply_mix(video: Tensor, draw: MixDraw) -> Tensor:
    """video: (B, ..., H, W) -> the mixed batch (a new tensor; the input is left as it is)."""
    if draw.lam == 1.0:
        return video
    flipped = video.flip(0)
    if draw.box is None:
        return video * draw.lam + flipped * (1.0 - draw.lam)
    y0, y1, x0, x1 = draw.box
    out = video.clone()
    out[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
    return out


def mix_targets(label: Tensor, num_classes: int, lam: float, smoothing: float) -> Tensor:
    """label (B,) long -> soft targets (B, num_classes) float32, label-smoothed and mixed with the reversed batch."""
    off = smoothing / num_classes
    one_hot = F.one_hot(label.long(), num_classes).float() * (1.0 - smoothing) + off
    return one_hot * lam + one_hot.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """mean over the batch of sum_c -target_c * log_softmax(logits)_c (float32)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


__all__ = ["MixDraw", "apply_mix", "draw_mix", "mix_targets", "soft_target_cross_entropy"]
