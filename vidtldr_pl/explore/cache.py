"""An evaluation DataModule that decodes each clip of a split once and serves the decoded batches from memory.

Wraps any evaluation DataModule (retrieval, classification): ``val_dataloader`` / ``test_dataloader`` pull the
wrapped loader once per split and keep its batches; every later evaluation (another merge setting) iterates the
kept tensors. Everything else (``eval_texts``, ``txt2vid``, ``num_videos``, class lists ...) is the wrapped module's.
The demo's 500 test clips at 8 x 3 x 96 x 96 take 0.44 GB as float32.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

log = logging.getLogger(__name__)


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (dict, list or tensor); 0 for None."""
    if batch is None:
        return 0
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        n = batch_size_of(value) if isinstance(value, (Tensor, dict, list, tuple)) else 0
        if n:
            return n
    return 0


class KeptBatches:
    """The kept batches of one split as one iterable loader (a list would read as several loaders)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class CachedEvalDataModule(pl.LightningDataModule):
    """inner: the evaluation DataModule to wrap. ``decoded[split]``: clips pulled from the wrapped loader (each is
    one decode); ``loads[split]``: evaluations served."""

    def __init__(self, inner: pl.LightningDataModule) -> None:
        super().__init__()
        self.inner = inner
        self.batches: dict[str, list[Any]] = {}
        self.decoded: dict[str, int] = {}
        self.loads: dict[str, int] = {}
        self._prepared = False
        self._setup: set[str] = set()

    def __getattr__(self, name: str) -> Any:  # the evaluation contract of the wrapped module
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def _sync_trainer(self) -> None:
        self.inner.trainer = self.trainer

    def prepare_data(self) -> None:
        self._sync_trainer()
        if not self._prepared:
            self.inner.prepare_data()
            self._prepared = True

    def setup(self, stage: str) -> None:
        self._sync_trainer()
        if stage not in self._setup:
            self.inner.setup(stage)
            self._setup.add(stage)

    def _cached(self, split: str) -> KeptBatches:
        self._sync_trainer()
        if split not in self.batches:
            loader = self.inner.val_dataloader() if split == "validate" else self.inner.test_dataloader()
            batches = [b for b in loader if b is not None]
            self.batches[split] = batches
            self.decoded[split] = sum(batch_size_of(b) for b in batches)
            log.info("decoded %d clips of the %s split once (kept in memory)", self.decoded[split], split)
        self.loads[split] = self.loads.get(split, 0) + 1
        return KeptBatches(self.batches[split])

    def val_dataloader(self) -> KeptBatches:
        return self._cached("validate")

    def test_dataloader(self) -> KeptBatches:
        return self._cached("test")

    def load(self, split: str) -> None:
        """Decode ``split`` ("validate" / "test") now (the first evaluation would otherwise do it)."""
        self._cached(split)
        self.loads[split] -= 1


__all__ = ["CachedEvalDataModule", "KeptBatches", "batch_size_of"]
