"""VideoMAE's clip and view protocols (MCG-NJU/VideoMAE ``kinetics.py`` / ``ssv2.py``): which frames a video is
decoded at, and how the test views are cut from them.

Temporal protocols (``mode``: "test" = the multi-view buffer, "val" = one deterministic clip, "train" = a random clip):

- :class:`DenseClips` (Kinetics, UCF101, HMDB51; "I3D dense"): ``clip_len`` frames ``rate`` apart.
  test: every ``rate``-th frame of the whole video (padded with the last to ``clip_len``); clip k of K starts at
  ``int(k * max((F - clip_len) / (K - 1), 0))`` of those F kept frames. train: VideoMAE's random window (its end
  drawn in ``[clip_len * rate, vlen)``, ``clip_len`` frames spread over it by ``linspace``). val: the same window at
  the middle of that range (VideoMAE draws it at random in validation too; a fixed one makes validation repeatable).
- :class:`SegmentClips` (SSv2; "TSN uniform"): ``num_segments`` segments of ``tick = vlen / num_segments`` frames.
  test: the sorted union of the segment starts ``int(tick * x)`` and midpoints ``int(tick / 2 + tick * x)``; view 0 =
  ``buffer[0::2]`` (starts), view 1 = ``buffer[1::2]`` (midpoints). train: one random frame per segment (VideoMAE:
  ``x * (vlen // n) + randint(vlen // n)``; all zeros when ``vlen < n``, as official). val: the midpoints.

Spatial views: the short side resized to ``size`` (bilinear, VideoMAE's ``int(size * long / short)`` for the long
side; cv2 in the original, torch here: values within about one level), then ``num_crops`` windows of ``size`` along
the long side at ``int(j * (L - size) / (num_crops - 1))``; one crop is the centre, ``round((L - size) / 2)`` as
VideoMAE's ``CenterCrop``. View ``v`` of a video is clip ``v // num_crops``, crop ``v % num_crops``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ClipProtocol", "DenseClips", "FrameRule", "SegmentClips", "crop_starts", "resize_short_side", "spatial_crop"]

MODES = ("test", "val", "train")


def _randrange(rng: object, low: int, high: int) -> int:
    """One draw from ``range(low, high)`` with a random.Random or a numpy generator."""
    if isinstance(rng, random.Random):
        return rng.randrange(low, high)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high))
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(low, high))
    raise TypeError(f"training frame draws need a random.Random or numpy generator, got {type(rng).__name__}")


@dataclass(frozen=True)
class DenseClips:
    """``clip_len`` frames ``rate`` apart (VideoMAE's Kinetics loader). See the module docstring."""

    clip_len: int = 16
    rate: int = 4

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.rate < 1:
            raise ValueError(f"DenseClips needs clip_len >= 1 and rate >= 1, got {self.clip_len}, {self.rate}")

    def frames(self, vlen: int, mode: str, rng: object = None) -> list[int]:
        """Frame indices to decode for a video of ``vlen`` frames."""
        if mode == "test":
            kept = list(range(0, vlen, self.rate))
            return kept + [kept[-1]] * (self.clip_len - len(kept))
        return self._window(vlen, rng if mode == "train" else None)

    def _window(self, vlen: int, rng: object) -> list[int]:
        span = self.clip_len * self.rate
        if vlen <= span:  # the whole (short) video, padded with its last frame
            index = np.linspace(0, vlen, num=vlen // self.rate)
            index = np.concatenate((index, np.ones(self.clip_len - vlen // self.rate) * vlen))
            return np.clip(index, 0, vlen - 1).astype(np.int64).tolist()
        end = _randrange(rng, span, vlen) if rng is not None else (span + vlen - 1) // 2
        start = end - span
        return np.clip(np.linspace(start, end, num=self.clip_len), start, end - 1).astype(np.int64).tolist()

    def clip(self, buffer_len: int, k: int, num_clips: int) -> list[int]:
        """Positions in the test buffer of temporal view ``k`` of ``num_clips`` (one clip: the centre)."""
        if num_clips > 1:
            start = int(k * max((buffer_len - self.clip_len) / (num_clips - 1), 0))
        else:
            start = max(buffer_len - self.clip_len, 0) // 2
        return list(range(start, start + self.clip_len))


@dataclass(frozen=True)
class SegmentClips:
    """One frame per segment of ``num_segments`` (VideoMAE's SSv2 loader, TSN). See the module docstring."""

    num_segments: int = 16

    def __post_init__(self) -> None:
        if self.num_segments < 1:
            raise ValueError(f"SegmentClips needs num_segments >= 1, got {self.num_segments}")

    @property
    def clip_len(self) -> int:
        return self.num_segments

    def frames(self, vlen: int, mode: str, rng: object = None) -> list[int]:
        """Frame indices to decode for a video of ``vlen`` frames."""
        n = self.num_segments
        tick = vlen / float(n)
        mids = [int(tick / 2.0 + tick * x) for x in range(n)]
        if mode == "test":
            return sorted(mids + [int(tick * x) for x in range(n)])
        if mode == "val":
            return mids
        average = vlen // n
        if average > 0:
            return [x * average + _randrange(rng, 0, average) for x in range(n)]
        return [0] * n  # official: frame 0 n times when the video is shorter than n frames

    def clip(self, buffer_len: int, k: int, num_clips: int) -> list[int]:
        """Positions in the test buffer of temporal view ``k``: 0 the segment starts, 1 the midpoints."""
        if num_clips > 2:
            raise ValueError(f"SegmentClips has 2 temporal views (segment starts, midpoints), asked for {num_clips}")
        return list(range(k, buffer_len, 2))


ClipProtocol = DenseClips | SegmentClips


@dataclass(frozen=True)
class FrameRule:
    """The frames ``protocol`` decodes in ``mode``, as a vidtldr_pl.data_modules.video index rule ``rule(num_frames, vlen, rng)``
    (``num_frames`` is ignored: the protocol knows its length). Picklable, for DataLoader workers."""

    protocol: ClipProtocol
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def __call__(self, num_frames: int, vlen: int, rng: object = None) -> list[int]:
        return self.protocol.frames(vlen, self.mode, rng)


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (T, C, H, W) -> uint8 (T, C, h, w) with min(h, w) = size and the long side ``int(size * long / short)``
    (VideoMAE's ``Resize(size)``; unchanged when the short side is already ``size``). Bilinear, no antialiasing,
    rounded."""
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    oh, ow = (int(size * h / w), size) if w < h else (size, int(size * w / h))
    x = F.interpolate(frames.float(), size=(oh, ow), mode="bilinear", align_corners=False, antialias=False)
    return x.clamp_(0, 255).round_().to(torch.uint8)


def crop_starts(length: int, size: int, num_crops: int) -> list[int]:
    """Offsets of ``num_crops`` windows of ``size`` along a side of ``length`` (VideoMAE's test crops; one crop: the
    centre as its CenterCrop)."""
    if num_crops == 1:
        return [int(round((length - size) / 2.0))]
    step = (length - size) / (num_crops - 1)
    return [int(j * step) for j in range(num_crops)]


def spatial_crop(frames: torch.Tensor, size: int, j: int, num_crops: int) -> torch.Tensor:
    """Window ``j`` of ``num_crops`` of a short-side-resized clip (T, C, H, W): ``size`` wide along the long side
    (VideoMAE crops along H when H >= W); the short side is kept whole."""
    h, w = frames.shape[-2:]
    if h >= w:
        s = crop_starts(h, size, num_crops)[j]
        return frames[..., s:s + size, :]
    s = crop_starts(w, size, num_crops)[j]
    return frames[..., s:s + size]
