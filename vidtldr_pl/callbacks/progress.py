"""A Lightning progress bar for logs: batches of training / validation / test as plain lines (``vidtldr_pl.progress``).

Lightning's default bar (tqdm) rewrites one line with carriage returns: in a pipe or a CI log it shows nothing until
the loop ends. ``LogProgressBar`` writes a line at least every few seconds instead (with the training metrics);
``train.py`` / ``evaluate.py`` use it when stderr is not a terminal and keep Lightning's bar on a terminal.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from ..progress import Progress


class LogProgressBar(ProgressBar):
    """Batches as log lines (rank 0 only). ``interval``: seconds between lines (None: ``vidtldr_pl.progress``'s)."""

    def __init__(self, interval: float | None = None) -> None:
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._bar: Progress | None = None
        self._paused_train: tuple[str, int | None, int] | None = None  # a training epoch interrupted by validation

    # ------------------------------------------------------------------ ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self._enabled:
            print(*args, sep=sep, **kwargs)

    # ------------------------------------------------------------------ helpers
    def _open(self, description: str, total: int | float | None, completed: int = 0) -> None:
        self._close()
        if not self._enabled:
            return
        total_int = int(total) if total is not None and total != float("inf") else None
        self._bar = Progress(description, total=total_int, unit="batches", interval=self.interval, terminal=False)
        self._bar.completed = completed
        self._bar.start()

    def _advance(self, trainer: pl.Trainer | None = None, pl_module: pl.LightningModule | None = None) -> None:
        if self._bar is None:
            return
        self._bar.advance()
        if trainer is not None and pl_module is not None:
            metrics = self.get_metrics(trainer, pl_module)
            self._bar.set_postfix(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in metrics.items() if k != "v_num"))
        if self._bar.total is not None and self._bar.completed >= self._bar.total:
            self._close()  # the loop may still validate or gather: no more lines about a finished count

    def _close(self, quiet: bool = False) -> None:
        if self._bar is not None:
            self._bar.close(quiet=quiet)
            self._bar = None

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused_train = None
        self._open(f"{self.train_description} epoch {trainer.current_epoch}", self.total_train_batches)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._advance(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    # ------------------------------------------------------------------ evaluation (may interrupt a training epoch)
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        if self._bar is not None and self._paused_train is None and not trainer.sanity_checking:  # validation in the middle of a training epoch
            self._paused_train = (self._bar.description, self._bar.total, self._bar.completed)
            self._close(quiet=True)
        description = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        self._open(description, self.total_val_batches_current_dataloader)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._advance()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self.reset_dataloader_idx_tracker()
        if self._paused_train is not None:
            self._open(*self._paused_train)
            self._paused_train = None

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._open(self.test_description, self.total_test_batches_current_dataloader)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._advance()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close(quiet=True)
        self._paused_train = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close(quiet=True)
