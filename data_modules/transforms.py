"""Video transforms of the official UMT retrieval pipeline, on uint8 ``(T, C, H, W)`` clips.

Official (``dataset/__init__.py`` of UMT, torchvision 0.13, tensor inputs):

- test:  ``Resize((224, 224), BICUBIC)`` -> ``x.float().div(255.)`` -> ``Normalize(mean, std)``
- train: ``RandomResizedCrop(224, scale=(0.5, 1.0), BICUBIC)`` -> ``RandomHorizontalFlip()`` -> same /255 +
  normalize. Applied to the whole ``(T, C, H, W)`` tensor, so every frame of a clip gets the same crop / flip.

Resize detail that matters for exactness: torchvision 0.13 resized a uint8 tensor by casting to float32,
``interpolate(mode="bicubic", align_corners=False)`` with no antialiasing, ``clamp(0, 255)``, ``round`` and
casting back to uint8. torchvision >= 0.17 antialiases by default, **and** on CPU its v2 ``resize`` runs bicubic
on uint8 with a native uint8 kernel that clamps between the two separable passes: that differs from the
float path by up to ~18 levels on real frames (``tree.avi``) even with ``antialias=False``. (On GPU v2 still
uses the float path.) :func:`resize_uint8` therefore implements the 0.13 float path explicitly on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoTestTransform",
    "VideoTrainTransform",
    "normalize_uint8",
    "random_resized_crop_params",
    "resize_uint8",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check_clip(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 clip, got {frames.dtype}")
    if frames.ndim != 4:
        raise ValueError(f"expected (T, C, H, W), got shape {tuple(frames.shape)}")


def resize_uint8(frames: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bicubic resize without antialiasing, exactly as torchvision 0.13 did for uint8 tensors.

    Args:
        frames: uint8 ``(T, C, H, W)`` (any leading shape ``(..., C, H, W)`` works).
        size: output ``(h, w)`` (an int means square; the aspect ratio is not kept, as the official
            ``Resize((224, 224))``).

    Returns:
        uint8 ``(..., C, h, w)``: ``round(clamp(interpolate(float(frames)), 0, 255))``.
    """
    h, w = _pair(size)
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8, got {frames.dtype}")
    if tuple(frames.shape[-2:]) == (h, w):
        return frames
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:]).to(torch.float32)
    x = F.interpolate(x, size=[h, w], mode="bicubic", align_corners=False, antialias=False)
    x = x.clamp_(0, 255).round_().to(torch.uint8)
    return x.reshape(*lead, *x.shape[-3:])


def normalize_uint8(
    frames: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``frames.float().div(255.)`` then ``(x - mean) / std`` per channel (torchvision ``normalize``).

    Args:
        frames: uint8 ``(T, C, H, W)``.

    Returns:
        float32 ``(T, C, H, W)``.
    """
    x = frames.to(torch.float32).div(255.0)
    return TF.normalize(x, mean=list(mean), std=list(std))


class VideoTestTransform:
    """Official test transform: bicubic resize to ``size`` (no crop, no antialias), /255, ImageNet normalize.

    ``transform(frames)``: uint8 ``(T, C, H, W)`` -> float32 ``(T, C, size_h, size_w)``. Picklable, stateless.
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = _pair(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        _check_clip(frames)
        return normalize_uint8(resize_uint8(frames, self.size), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mean={self.mean}, std={self.std})"


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` with the algorithm of torchvision's ``RandomResizedCrop.get_params``
    (10 tries of area/log-ratio sampling, then a central crop clamped to ``ratio``), drawing from
    ``generator`` instead of torch's global RNG."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class VideoTrainTransform:
    """Official train augmentation: RandomResizedCrop(``size``, ``scale``, ``ratio``, bicubic, no antialias) +
    RandomHorizontalFlip(``flip_p``), one crop / flip for all frames of a clip, then /255 and normalize.

    ``transform(frames)``: uint8 ``(T, C, H, W)`` -> float32 ``(T, C, size_h, size_w)``.

    Randomness comes from a ``torch.Generator`` seeded with ``seed`` (or from torch's global RNG when
    ``seed`` is None, as the official code, which works with Lightning's per-worker seeding). For
    per-sample reproducibility independent of worker layout, pass ``generator=`` to :meth:`__call__`.
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
    ) -> None:
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = seed
        self._generator: torch.Generator | None = None
        if seed is not None:
            self._generator = torch.Generator().manual_seed(seed)

    def get_params(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int, bool]:
        """Draw ``(top, left, h, w, flip)`` for one clip."""
        gen = generator if generator is not None else self._generator
        top, left, h, w = random_resized_crop_params(height, width, self.scale, self.ratio, gen)
        flip = bool(torch.rand(1, generator=gen).item() < self.flip_p)
        return top, left, h, w, flip

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_clip(frames)
        top, left, h, w, flip = self.get_params(frames.shape[-2], frames.shape[-1], generator)
        x = resize_uint8(frames[..., top : top + h, left : left + w], self.size)
        if flip:
            x = x.flip(-1)
        return normalize_uint8(x, self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip_p={self.flip_p}, seed={self.seed})"
        )
