"""How a run ends and where it writes, for evaluate.py / train.py:

- ``StopOnSignal``: SIGTERM (a scheduler, ``kill``) and SIGINT (Ctrl-C) end the run within seconds with a
  non-zero exit (128 + the signal: 143 / 130) and one line saying what was finished and where it was written.
  An evaluation stops at once (finished ``compare`` rows are already in the results file); a training stopped by
  SIGTERM first saves a resumable checkpoint at the end of the current batch (the preemption path of clusters),
  which ``--ckpt_path`` resumes exactly.
- ``reserve_version``: a logger's ``version_N`` folder is taken with an atomic ``mkdir``, so two runs of one
  config never share a folder; ``unique_path`` does the same for a results file.
- ``check_merge_settings``: every merge setting of the run (each ``compare`` row, the TokenMerging callback)
  against the model's blocks, before any video is decoded.
"""
from __future__ import annotations

import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from .errors import UsageError

if TYPE_CHECKING:
    from .merging import MergeSetting


class RunInterrupted(BaseException):
    """The run was stopped by a signal (BaseException: nothing on the way treats it as an ordinary error)."""

    def __init__(self, signum: int, checkpoint: str | None = None, step: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint, self.step = signum, checkpoint, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopOnSignal(Callback):
    """Installed for the whole run (``with stop.installed():``) and added to the trainer as a callback.

    The signal handlers raise ``RunInterrupted`` at once, except SIGTERM while a training epoch runs: then the
    flag is read at the end of the batch (agreed by every process), a checkpoint is saved and RunInterrupted
    carries its path."""

    def __init__(self) -> None:
        super().__init__()
        self.sigterm = False
        self._in_training = False
        self._trainer: pl.Trainer | None = None

    # ------------------------------------------------------------------ handlers
    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and self._in_training:
            self.sigterm = True  # the batch ends first; on_train_batch_end saves and stops
            return
        raise RunInterrupted(signum)

    @contextmanager
    def installed(self) -> Iterator["StopOnSignal"]:
        """SIGTERM and SIGINT handled by this object inside the block (Lightning's own SIGTERM notifier is
        composed with it while a trainer runs); the previous handlers afterwards."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # ------------------------------------------------------------------ training: checkpoint on SIGTERM
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer, self._in_training = trainer, True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_training = False
        if self.sigterm:  # arrived at the very end of an epoch: stop before validating
            raise RunInterrupted(signal.SIGTERM)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_training = trainer.training

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_training = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_training = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.sigterm or bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:  # every process stops at the same batch (the signal may reach only one)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        self._in_training = False
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        raise RunInterrupted(signal.SIGTERM, checkpoint=str(path), step=trainer.global_step)


def preemption_checkpoint_path(trainer: pl.Trainer) -> Path:
    """<the checkpoint folder>/preempted-step<N>.ckpt (the ModelCheckpoint's folder, else <log dir>/checkpoints)."""
    folder = None
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is not None and getattr(callback, "dirpath", None):
        folder = Path(callback.dirpath)
    if folder is None:
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    return folder / f"preempted-step{trainer.global_step}.ckpt"


# ------------------------------------------------------------------ one folder per run
_VERSION = re.compile(r"version_(\d+)$")
RESERVED: list[Path] = []  # folders / files this process reserved (release_unused removes them if left empty)


def is_first_process() -> bool:
    """True in a single process and in the launching process of a multi-process run (the others are started with
    a rank in the environment)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID",
                                                       "GROUP_RANK"))


def reserve_version(root: str | Path) -> int:
    """The next free ``version_N`` under ``root``, created atomically (another run cannot take the same N)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
            RESERVED.append(root / f"version_{n}")
            return n
        except FileExistsError:
            n += 1


def release_unused() -> None:
    """Remove the reserved version folders and results files that stayed empty (a run stopped by a usage error or
    a failure writes nothing)."""
    while RESERVED:
        path = RESERVED.pop()
        try:
            if path.is_file():
                if path.stat().st_size:
                    continue
                path.unlink()  # a results file reserved for a run that wrote nothing
            else:
                path.rmdir()  # only succeeds when empty
        except OSError:
            continue
        stop = Path.cwd().resolve()
        for parent in path.resolve().parents:  # lightning_logs/ and the save_dir made for it, while empty
            if parent == stop or stop.is_relative_to(parent):
                break
            try:
                parent.rmdir()
            except OSError:
                break


def reserve_logger_version(trainer_config: Any) -> None:
    """For a CSVLogger / TensorBoardLogger in the parsed trainer config without a version: take the next version
    folder atomically and write it into the config (first process only; the others follow rank 0's folder)."""
    if not is_first_process():
        return
    logger = _get(trainer_config, "logger")
    loggers = logger if isinstance(logger, list) else [logger]
    for item in loggers:
        class_path = str(_get(item, "class_path") or "")
        if not class_path.endswith(("CSVLogger", "TensorBoardLogger")):
            continue
        args = _get(item, "init_args")
        if args is None or _get(args, "version") is not None:
            continue
        save_dir = _get(args, "save_dir") or _get(trainer_config, "default_root_dir") or os.getcwd()
        name = _get(args, "name")
        name = "lightning_logs" if name is None else name
        root = Path(save_dir) / name if name else Path(save_dir)
        _set(args, "version", reserve_version(root))


def unique_path(path: str | Path) -> Path:
    """``path`` if it can be created exclusively, else ``<stem>_1<suffix>``, ``_2``, ... (created empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(0, 10_000):
        candidate = path if i == 0 else path.with_name(f"{path.stem}_{i}{path.suffix}")
        try:
            with open(candidate, "x"):
                RESERVED.append(candidate)
                return candidate
        except FileExistsError:
            continue
    raise FileExistsError(path)


def _get(ns: Any, key: str, default: Any = None) -> Any:
    """``key`` of a parsed config node (a dict or a jsonargparse Namespace); ``default`` when absent or None."""
    if ns is None:
        return default
    return ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)


def _set(ns: Any, key: str, value: Any) -> None:
    if isinstance(ns, dict):
        ns[key] = value
    else:
        setattr(ns, key, value)


# ------------------------------------------------------------------ merge settings before any decoding
def check_merge_settings(model: Any, settings: list[tuple[str, MergeSetting]]) -> None:
    """Each (where, setting) against every mergeable encoder of ``model``: method known, r valid and fitting the
    blocks. Raises UsageError naming the row / callback and the problem."""
    from .merging import find_mergeable
    from .merging.schedule import build_schedule

    encoders = find_mergeable(model)
    for where, setting in settings:
        try:
            setting.check()
            if setting.merges:
                for encoder in encoders:
                    build_schedule(setting.r, len(encoder.blocks), setting.layers)
        except (ValueError, TypeError) as err:
            raise UsageError(f"{where}: {err}") from None


__all__ = ["RunInterrupted", "StopOnSignal", "check_merge_settings", "reserve_logger_version", "reserve_version",
           "unique_path"]
