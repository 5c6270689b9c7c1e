"""``GeneratedOnFirstUse``: the Lightning hooks of a DataModule whose data is generated from a seed on first use
(the synthetic benchmarks). Only the splits a stage reads are generated, once, in ``prepare_data`` (one process per
node); ``setup`` resolves them again in every process (idempotent) before the DataModule's own setup."""
from __future__ import annotations

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def stage_splits(stages: tuple[str, ...]) -> set[str]:
    """The splits these Lightning stages read, e.g. ("fit",) -> {"train", "val"}."""
    return {split for stage in stages for split in STAGE_SPLITS[stage]}


class GeneratedOnFirstUse:
    """Mixin placed before a LightningDataModule; the subclass implements ``_resolve(stages)``: generate what those
    stages read (if missing) and point its hyperparameters (annotation files, video root, ...) at it."""

    def _resolve(self, stages: tuple[str, ...]) -> None:  # pragma: no cover - the subclass's job
        raise NotImplementedError

    def prepare_data(self) -> None:
        trainer = getattr(self, "trainer", None)
        stage = trainer.state.fn.value if trainer is not None and trainer.state.fn is not None else None
        self._resolve((stage,) if stage in STAGE_SPLITS else ("test",))

    def setup(self, stage: str) -> None:
        self._resolve((stage,))
        super().setup(stage)  # type: ignore[misc]
