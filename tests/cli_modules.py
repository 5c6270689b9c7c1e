"""Small LightningModule / DataModule importable by class_path in CLI tests."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from vidtldr_pl.backbones import create_model


class TinyVideoData(pl.LightningDataModule):
    def __init__(self, num_videos: int = 4, batch_size: int = 2) -> None:
        super().__init__()
        self.num_videos, self.batch_size = num_videos, batch_size

    def val_dataloader(self):
        video = torch.randn(self.num_videos, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(video), batch_size=self.batch_size)

    test_dataloader = val_dataloader


class TokenCounter(pl.LightningModule):
    """Logs the number of tokens the backbone ends with."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_model("umt_tiny").vision_encoder

    def validation_step(self, batch, _):
        tokens, _ = self.backbone(batch[0])
        self.log("final_tokens", float(tokens.shape[1]))

    test_step = validation_step
