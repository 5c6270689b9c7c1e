"""Lightning callback: saliency / merge maps of the first N evaluated videos, written into the logger's folder.

YAML (trainer.callbacks)::

    - class_path: vidtldr_pl.callbacks.merge_maps.MergeMapsCallback
      init_args: {first_n: 4}

For each of the first ``first_n`` videos of a validation / test epoch it writes ``<log dir>/merge_maps/<stage>_
video<index>_grid.png``, ``.gif`` and ``_share.png`` / ``.svg`` (see ``tools/visualize.py``), with the model's
current merge setting (a method with a token saliency: vid-TLDR or vid-TLDR RepShift; others are skipped with one
warning). Costs one extra encoder forward per shown video.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from ..explore.maps import merge_maps
from ..explore.render import write_all
from ..merging import find_mergeable

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def display_frames(video: Tensor, tubelet: int = 1, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """A normalised clip (T, 3, H, W) -> (T / tubelet, H, W, 3) uint8 for display."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    rgb = (video.detach().float().cpu() * s + m).clamp(0, 1)
    return (rgb[::tubelet] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class MergeMapsCallback(pl.Callback):
    """first_n: videos shown per evaluation epoch; folder: sub-folder of the logger's directory (or of the
    trainer's default_root_dir without a logger)."""

    def __init__(self, first_n: int = 4, folder: str = "merge_maps") -> None:
        if first_n < 0:
            raise ValueError(f"first_n must be >= 0, got {first_n}")
        self.first_n = first_n
        self.folder = folder
        self.seen = 0
        self.written: list[Path] = []
        self._warned = False

    def out_dir(self, trainer: pl.Trainer) -> Path:
        base = trainer.log_dir if trainer.logger is not None and trainer.log_dir else trainer.default_root_dir
        return Path(base) / self.folder

    def _start(self) -> None:
        self.seen = 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def _batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, stage: str) -> None:
        if self.seen >= self.first_n or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not isinstance(batch, dict) or not isinstance(batch.get("video"), Tensor):
            return
        encoders = find_mergeable(pl_module)
        method = encoders[0].merge_settings.method if encoders else None
        if method is None or not hasattr(method, "token_saliency"):
            if not self._warned:
                log.warning("MergeMapsCallback: the merge method %s has no token saliency; no maps written",
                            type(method).__name__)
                self._warned = True
            return
        encoder = encoders[0]
        videos = batch["video"]  # (B, T, 3, H, W)
        index = batch.get("video_index")
        param = next(encoder.parameters())
        for b in range(videos.shape[0]):
            if self.seen >= self.first_n:
                break
            with torch.no_grad():
                maps = merge_maps(encoder, videos[b:b + 1].permute(0, 2, 1, 3, 4).to(param.device, param.dtype))
            i = int(index[b]) if isinstance(index, Tensor) else self.seen
            frames = display_frames(videos[b], encoder.cfg.tubelet_size)
            paths = write_all(frames, maps, self.out_dir(trainer), f"{stage}_video{i}", f"{stage} video {i}")
            self.written.extend(paths.values())
            self.seen += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, pl_module, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, pl_module, batch, "test")


__all__ = ["MergeMapsCallback", "display_frames"]
