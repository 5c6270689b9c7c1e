"""``GeneratedOnFirstUse``: the Lightning hooks of a DataModule whose data is generated from a seed on first use
(the synthetic benchmarks). Only the splits a stage reads are generated, once, in ``prepare_data`` (one process per
node); ``setup`` resolves them again in every process (idempotent) before the DataModule's own setup."""
from __future__ import annotations

from pathlib import Path

from .base import READS, STAGES, stage_key

#: The split each annotation a stage reads is written as.
SPLIT_OF = {"fit": "train", "validate": "val", "test": "test"}


def stage_splits(stages: tuple[str, ...]) -> set[str]:
    """The splits these Lightning stages read, e.g. ("fit",) -> {"train", "val"}."""
    return {SPLIT_OF[s] for stage in stages for s in READS[stage_key(stage)]}


class GeneratedOnFirstUse:
    """Mixin placed before a VideoDataModule subclass. Its ``__init__`` sets ``cache_dir``, ``clip_config`` (what the
    clips are generated from) and ``generated_sizes`` ({"train": n, "val": n, "test": n}); it implements
    ``generate(sizes)``: write (if missing) the splits with n > 0 into cache_dir and return the dataset folder, whose
    ``anno/<annotation_prefix><split>_<n>.json`` the annotation options are pointed at; ``use(folder)`` points the
    other options (video root, tokenizer, ...) at it."""

    annotation_prefix = ""
    generated_sizes: dict[str, int]

    def generate(self, sizes: dict[str, int]) -> Path:  # pragma: no cover - the subclass's job
        raise NotImplementedError

    def use(self, folder: Path) -> None:
        """Point the options other than the annotations at the generated ``folder`` (here: the video root)."""
        self.hparams.video_root = str(folder / "videos")

    def _resolve(self, stages: tuple[str, ...]) -> None:
        """Generate the splits these stages read (once, into cache_dir) and point the hyperparameters at them."""
        splits = stage_splits(stages)
        sizes = self.generated_sizes
        folder = self.generate({split: (n if split in splits else 0) for split, n in sizes.items()})  # others: none
        for split, option in zip(("train", "val", "test"), self.annotation_options):
            if split in splits:
                name = f"{self.annotation_prefix}{split}_{sizes[split]}.json"
                self.hparams[option] = str(folder / "anno" / name) if sizes[split] else None
        self.use(folder)

    def prepare_data(self) -> None:
        trainer = self.trainer
        stage = trainer.state.fn.value if trainer is not None and trainer.state.fn is not None else None
        self._resolve((stage,) if stage in STAGES else ("test",))

    def setup(self, stage: str) -> None:
        self._resolve((stage,))
        super().setup(stage)  # type: ignore[misc]
