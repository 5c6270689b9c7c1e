"""The samples the video DataModules build on: a video decoded and transformed into one clip, and the collate
function that drops the samples a skip policy gave up on (``skip_errors``: None).

Training keys are ``(index, sample_seed)`` pairs (``ResumableSampler``): the frames drawn, the crop and the flip of
a training clip come from that seed, so they do not depend on the worker or the process that loads it.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, default_collate

from .video import VideoDecoder

__all__ = ["ClipDataset", "collate_skipping", "sample_key", "train_clip"]

Transform = Callable[..., torch.Tensor]


def sample_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """``(index, seed)`` of a dataset key: an index alone, or ``(index, seed)`` from ResumableSampler."""
    return key if isinstance(key, tuple) else (key, None)


def train_clip(decoder: VideoDecoder, transform: Transform, path: str, seed: int | None) -> torch.Tensor | None:
    """A training clip of ``path``: frames drawn by ``decoder`` and crop / flip by ``transform``, both from ``seed``
    (unseeded when None): float (T, 3, H, W), or None when the video is skipped."""
    clip = decoder(path, rng=random.Random(seed))
    if clip is None:
        return None
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return transform(clip.frames, generator=generator)


def collate_skipping(batch: list[dict | None]) -> dict | None:
    """default_collate without the samples a skip policy dropped (None); None when none is left."""
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


class ClipDataset(Dataset):
    """Decodes video i of a list: {"video": (T, 3, H, W), "video_index": i} (None when skipped)."""

    def __init__(self, videos: list[str], decoder: VideoDecoder, transform: Transform, train: bool = False) -> None:
        self.videos, self.decoder, self.transform, self.train = videos, decoder, transform, train

    def __len__(self) -> int:
        return len(self.videos)

    def load(self, i: int, seed: int | None = None) -> torch.Tensor | None:
        """Video i as a clip (T, 3, H, W); training randomness (frames, crop, flip) from ``seed``."""
        if self.train:
            return train_clip(self.decoder, self.transform, self.videos[i], seed)
        clip = self.decoder(self.videos[i])
        return None if clip is None else self.transform(clip.frames)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        i, seed = sample_key(key)
        video = self.load(i, seed)
        return None if video is None else {"video": video, "video_index": i}
