"""Training order and per-sample randomness that depend only on (seed, epoch, index): the same on any number of
workers, and resumable in the middle of an epoch.

``ResumableSampler`` is a ``DistributedSampler`` (so Lightning keeps it under DDP instead of wrapping it) that also
serves a single process; it yields ``(index, sample_seed)`` pairs, and the dataset seeds its frame sampling and
augmentation with ``sample_seed``. ``skip`` drops the first samples of the next pass only (resuming mid-epoch).
Under a trainer the sampler takes its place from ``position`` when a pass starts (the count of batches trained), so a
resumed run continues at the right epoch and sample whatever epoch number Lightning passes to ``set_epoch``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    import lightning.pytorch as pl


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` (splitmix64 of the three)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x >> 1


class ResumableSampler(DistributedSampler):
    """Seeded shuffling per epoch (``set_epoch``), this process's share of the data, ``(index, seed)`` pairs.

    Args: dataset; num_replicas / rank (1 / 0 on one process); shuffle; seed; drop_last (as DistributedSampler);
        position: called when a pass starts, returns (epoch, samples of it already trained); it overrides
        ``set_epoch`` and ``skip`` (the DataModule passes the trainer's count of processed batches).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, position: Callable[[], tuple[int, int]] | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0
        self.position = position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.position is not None:
            self.epoch, self.skip = self.position()
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        for i in indices[skip:]:
            yield i, sample_seed(self.seed, self.epoch, i)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ResumableSampler that Lightning saves with its checkpoints (``state_dict``).

    The position inside the epoch is not stored here: the sampler derives it from the restored trainer progress
    (batches already processed) when a pass starts, which stays right however many batches Lightning had
    prefetched when it saved. The state records the sampling seed and epoch, and a checkpoint written with a
    different seed is refused (its remaining data order would silently differ).
    """

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.sampler.seed, "epoch": self.sampler.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.sampler.seed) != self.sampler.seed:
            raise ValueError(f"the checkpoint was trained with data seed {state['seed']}, this run uses "
                             f"{self.sampler.seed}: resume with the same seed (data.init_args.seed)")


def epoch_length(trainer: pl.Trainer, batches: int) -> int:
    """Training batches per epoch under ``limit_train_batches`` (an int caps, a float is a fraction)."""
    limit = trainer.limit_train_batches
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def trained_position(trainer: pl.Trainer, epoch_len: int) -> tuple[int, int]:
    """(epoch, batches of it already trained) where the next training batch comes from.

    Derived from the count of all training batches processed (restored with a checkpoint), not from Lightning's
    epoch counters: a checkpoint written after an epoch's last batch or after its validation does not count that
    epoch as finished when the loader is built, and a ``max_steps`` run restarted there can pass ``set_epoch`` an
    epoch ahead of ``current_epoch``. Every epoch has ``epoch_len`` batches (drop_last)."""
    total = int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
    if epoch_len <= 0:
        return trainer.current_epoch, 0
    return divmod(total, epoch_len)


def trainer_position(trainer: pl.Trainer, batches: int, batch_size: int) -> Callable[[], tuple[int, int]]:
    """``ResumableSampler.position`` under ``trainer``: (epoch, samples of it already trained), read when each pass
    starts, so a resumed run continues at the right epoch and sample. ``batches``: full batches of this process's
    share of the data per epoch (before ``limit_train_batches``)."""
    epoch_len = epoch_length(trainer, batches)

    def position() -> tuple[int, int]:
        epoch, done = trained_position(trainer, epoch_len)
        return epoch, done * batch_size

    return position
