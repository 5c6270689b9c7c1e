"""Shared LightningCLI plumbing of train.py and evaluate.py: config lookup, the short help, the ``--merge.*``
override, progress lines in logs, quiet output, the saved run config."""
from __future__ import annotations

import logging
import signal
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from importlib import import_module
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from .cli_help import HELP_ALL_FLAG, config_dir, help_requested, short_help
from .errors import EXIT_USAGE, CheckpointError, MergeOverrideError, UsageError, user_error_in
from .merging import MergeOverride, MergeSetting
from .preflight import CHECKPOINT_HINT, parser_error_line
from .run_control import (RunInterrupted, StopOnSignal, check_merge_settings, is_first_process,
                          reserve_logger_version, unique_path)
from .strategy_check import exit_on_unusable_strategy


class _NoAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines (``rank_zero_info`` calls in
    Lightning's logger and callback connectors, shown unless those cloud packages are installed; no switch)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


_NO_ADVERTS = _NoAdverts()


def quiet_lightning() -> None:
    """No Lightning adverts, and no warnings about code that is not ours: Lightning 2.6's ``_pytree`` on torch 2.14
    (``isinstance(treespec, LeafSpec)`` is deprecated), LightningCLI's use of deprecated jsonargparse methods and its
    note on its ``args`` (we pass sys.argv, with shipped config names resolved)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "pytorch_lightning.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NO_ADVERTS not in logger.filters:
            logger.addFilter(_NO_ADVERTS)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # LightningCLI 2.6 itself calls jsonargparse APIs deprecated in 4.49 (add_instantiator, ...)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")


MERGE_CALLBACK = "vidtldr_pl.callbacks.TokenMerging"


def _is_token_merging(callback: Any) -> bool:
    """Whether a parsed (not yet instantiated) callback node names TokenMerging or a subclass."""
    from .callbacks import TokenMerging

    module, _, name = str(callback.get("class_path", "")).rpartition(".")
    try:
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, TokenMerging)


def apply_merge_override(config: Any, stage: str) -> None:
    """Apply the ``merge`` group (``--merge.method`` / ``--merge.r`` / ``--merge.layers``, a MergeOverride) to a
    parsed (not yet instantiated) config, so that the saved config is the run's.

    - With ``method``: this one setting (method, r, layers) is the run's merging. The TokenMerging callback (added
      if missing) takes it; an r not given is the callback's, else the first merging ``compare`` row's; ``compare``
      is dropped, so evaluate.py reports this one setting.
    - ``r`` / ``layers`` alone: they replace r / layers wherever the config merges: its TokenMerging callback and
      every ``compare`` row whose method is not "none" (a comparison stays a comparison at the new schedule).

    Raises MergeOverrideError when nothing would change: r without a method in a config that does not merge (in
    train.py, without a TokenMerging callback), or a method that merges with no r anywhere.
    """
    from jsonargparse import Namespace

    override = MergeOverride(**(config.get("merge") or {}))
    if not override.given:
        return
    trainer = config.trainer
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    merging = [cb.init_args for cb in callbacks if _is_token_merging(cb)]  # parsed: every init arg is present
    rows = list(config.get("compare") or [])

    if override.method is not None:
        override.batching = override.batching or "pad"
        if override.r is None:
            override.r = next((node.r for node in merging + rows if node.method != "none" and node.r is not None),
                              None)
        setting = MergeSetting(**vars(override))
        try:
            setting.check()
        except ValueError as err:
            raise MergeOverrideError(f"--merge.method={override.method}: {err}") from None
        if setting.merges and setting.r is None:
            raise MergeOverrideError(f"--merge.method={override.method} needs --merge.r (the config has no r to "
                                     "reuse)")
        for node in merging:
            node.update(Namespace(**vars(override)))
        if not merging:  # the callback's own defaults for every other init arg
            added = Namespace(class_path=MERGE_CALLBACK, init_args=Namespace(**vars(override)))
            trainer.callbacks = [*callbacks, added]
        config.compare = None
        return

    if override.method_options is not None:
        raise MergeOverrideError("--merge.method_options belongs to one method: give --merge.method with it")
    targets = [node for node in merging if node.method != "none"]
    if stage == "evaluate":
        targets += [row for row in rows if row.method != "none"]
    if not targets:
        where = "no TokenMerging callback" + ("" if stage == "fit" else ", no `compare` row that merges")
        raise MergeOverrideError(f"--merge.r / --merge.layers / --merge.batching: the config has no merging to "
                                 f"change ({where}); "
                                 "give --merge.method too, e.g. --merge.method=vidtldr")
    for node in targets:
        node.update(Namespace(**override.given))


class SaveRunConfig(SaveConfigCallback):
    """The resolved config of a run, saved into its log folder as ``config.yaml``; when that name is taken (a
    second run into the same folder, e.g. without a versioned logger) as ``config_<time>.yaml``, never aborting.
    At the end of the fit, rank 0 prints one line naming the config and the best / last checkpoints (the run
    folder's version is not always version_0)."""

    config_path: str | None = None  # where setup saved the config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        # trainer.log_dir is a collective (rank 0 broadcasts its folder): every process reads it, in the same order
        log_dir = trainer.log_dir
        name = self.config_filename
        if trainer.is_global_zero and log_dir is not None:
            folder = Path(log_dir)
            stem, suffix = Path(name).stem, Path(name).suffix or ".yaml"
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            candidates = [name] + [f"{stem}_{stamp}{suffix}"] + [f"{stem}_{stamp}_{i}{suffix}" for i in range(1, 1000)]
            name = next(c for c in candidates if not (folder / c).exists())
        self.config_filename = trainer.strategy.broadcast(name)
        self.config_path = str(Path(log_dir) / self.config_filename) if log_dir is not None else None
        super().setup(trainer, pl_module, stage)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.callbacks import ModelCheckpoint

        parts: list[str] = []
        for cb in trainer.callbacks:
            if not isinstance(cb, ModelCheckpoint):
                continue
            what = {None: "latest", "step": "newest periodic"}.get(cb.monitor, f"best by {cb.monitor}")
            for label, path in ((what, cb.best_model_path), ("last", cb.last_model_path)):
                if path and not any(p.endswith(f" {path}") for p in parts):
                    parts.append(f"{label} {path}")
        written = "checkpoints: " + ", ".join(parts) if parts else "no checkpoint written"
        print(written + (f" (config: {self.config_path})" if self.config_path else ""), flush=True)


class VidTLDRCLI(LightningCLI):
    """LightningCLI (model / data / trainer as class_path + init_args) plus the evaluation options:

    - ``compare``: a list of MergeSettings (method, r, layers, name, ...) evaluated one after another;
    - ``split``: "test" (default) or "validate";
    - ``results``: the JSON file of the evaluation (default: <log dir or default_root_dir>/results.json);
    - ``ckpt_path``: train.py resumes from this checkpoint;
    - ``merge``: a MergeOverride (``--merge.method`` / ``--merge.r`` / ``--merge.layers``), the merge setting of
      this run (``apply_merge_override``).

    Both scripts accept every option, so one config serves both. ``stage``: "evaluate" or "fit". Built with
    ``run=False`` (no subcommands): ``self.config`` / ``self.config_init`` hold model, data and trainer at the top.
    """

    def __init__(self, *args: Any, stage: str = "evaluate", **kwargs: Any) -> None:
        self.stage = stage
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--compare", type=list[MergeSetting] | None, default=None,
                            help="merge settings evaluated in a row, e.g. [{method: none}, {method: vidtldr, r: [100]}]")
        parser.add_argument("--split", type=str, default="test", help="evaluation split: test | validate")
        parser.add_argument("--results", type=str | None, default=None, help="JSON file for the evaluation results")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="train.py: resume from this checkpoint (\"last\": the newest in the run folder)")
        parser.add_class_arguments(MergeOverride, "merge", help="Merging of this run: override the config's token "
                                   "merging (TokenMerging callback and `compare` rows).")

    def before_instantiate_classes(self) -> None:
        try:
            apply_merge_override(self.config, self.stage)
        except MergeOverrideError as err:  # a usage error: one line, exit code 2 (as argparse)
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        trainer = self.config.get("trainer")
        exit_on_unusable_strategy(trainer)  # DeepSpeed / a GPU accelerator without CUDA: one line, exit 2
        reserve_logger_version(trainer)  # version_N taken atomically: concurrent runs never share it

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """As LightningCLI, plus ``LogProgressBar`` (batches as log lines) when stderr is not a terminal, unless the
        config turns the progress bar off or brings its own; without a logger, no LearningRateMonitor."""
        config = {**(self.config_init.get("trainer") or {}), **kwargs}
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if config.get("logger") is False:  # --trainer.logger=false: LearningRateMonitor would raise at the start
            from lightning.pytorch.callbacks import LearningRateMonitor

            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        own_bar = any(isinstance(cb, ProgressBar) for cb in callbacks)
        if config.get("enable_progress_bar") is not False and not own_bar and not _stderr_is_terminal():
            from .callbacks.progress import LogProgressBar

            callbacks.append(LogProgressBar())
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})


def unreadable_resume_checkpoint(err: BaseException, ckpt_path: str | None) -> UsageError | None:
    """A UsageError naming ``--ckpt_path`` when ``err`` came from reading that file (a safe load refusing it, or not a
    checkpoint at all); None for any other error."""
    import traceback

    if not ckpt_path or not any(frame.f_code.co_filename.endswith(("torch/serialization.py", "cloud_io.py"))
                                for frame, _ in traceback.walk_tb(err.__traceback__)):
        return None
    text = str(err)
    blocked = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), None)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Check the documentation")]
    reason = (f"it holds Python objects that a safe load refuses ({blocked})" if blocked
              else f"not a PyTorch checkpoint ({(lines[-1] if lines else type(err).__name__)[:200]})")
    return UsageError(f"--ckpt_path {ckpt_path}: not a checkpoint this run can resume: {reason}")


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def build_cli(argv: list[str], stage: str = "evaluate") -> VidTLDRCLI:
    """The CLI of ``stage`` ("evaluate" / "fit") on ``argv``; training runs save their resolved config."""
    quiet_lightning()
    return VidTLDRCLI(
        pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        run=False, args=argv, stage=stage, seed_everything_default=0,  # Lightning's default seed, without its warning
        save_config_callback=SaveRunConfig if stage == "fit" else None,
        # parser errors raise (run_cli prints them as one line) instead of printing the whole usage
        parser_kwargs={"description": short_help(stage).split("\n\n")[1], "exit_on_error": False},
    )


@dataclass
class EvaluationProgress:
    """What an evaluation has finished so far (for the line printed when a signal stops it)."""

    total: int = 0
    done: int = 0
    path: Path | None = None
    current: str = ""

    def summary(self) -> str:
        if not self.done:
            return f"before the first of {self.total} evaluation(s) finished (during {self.current}); no results written"
        return (f"during {self.current or 'the report'}: {self.done} of {self.total} evaluation(s) finished, "
                f"written to {self.path}")


def merge_settings_of(cli: VidTLDRCLI, stage: str) -> list[tuple[str, MergeSetting]]:
    """(where, setting) of every merge setting the run will use: each ``compare`` row, the TokenMerging callback."""
    from .callbacks import TokenMerging

    rows = list(cli.config_init.compare or []) if stage == "evaluate" else []
    found = [(f"compare row {i + 1} ({row.label})", row) for i, row in enumerate(rows)]
    if not found:
        found = [(f"TokenMerging callback ({cb.setting.method})", cb.setting)
                 for cb in cli.trainer.callbacks if isinstance(cb, TokenMerging)]
    return found


def _evaluate(cli: VidTLDRCLI, progress: EvaluationProgress) -> None:
    from vidtldr_pl.compare import LoyaltyReference, evaluate_runs, print_results, write_results

    cfg = cli.config
    split = {"val": "validate", "valid": "validate"}.get(cfg.split, cfg.split)
    loyalty = LoyaltyReference() if cli.config_init.compare else None  # compare rows: each one's loyalty to unmerged
    runs = loyalty.plan(cli.config_init.compare, cli.model) if loyalty else [None]
    progress.total = len(runs)
    # every process reads the path (trainer.log_dir is a collective); rank 0 creates it exclusively
    path = Path(cfg.results) if cfg.results else default_results_path(cli.trainer)
    rows: list[dict[str, Any]] = []
    for i, run in enumerate(runs):
        progress.current = f"evaluation {i + 1} of {len(runs)}" + (f" ({run.label})" if run is not None else "")
        rows += evaluate_runs(cli.trainer, cli.model, cli.datamodule, [run] if run is not None else None, split,
                              loyalty)
        if cli.trainer.is_global_zero:
            progress.path = write_results(rows, path, _plain(cfg))  # after every row: a stopped run keeps them
        progress.done = len(rows)
    progress.current = ""
    if cli.trainer.is_global_zero:
        title = f"{type(cli.model).__name__} on {type(cli.datamodule).__name__} ({split} split)"
        print_results(rows, title)
        print(f"results written to {path}")


def default_results_path(trainer: pl.Trainer) -> Path:
    """<logger dir>/results.json next to the logs (the run's own version folder); without a logger
    <default_root_dir>/outputs/results_<time>.json, taken exclusively (``_1``, ``_2`` ... when a concurrent run
    has that name). Read on every process: ``trainer.log_dir`` is a collective."""
    log_dir = trainer.log_dir if trainer.logger is not None else None
    if log_dir:
        return Path(log_dir) / "results.json"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(trainer.default_root_dir) / "outputs" / f"results_{stamp}.json"
    if trainer.is_global_zero:
        path = unique_path(path)
    return Path(trainer.strategy.broadcast(str(path)))


def _plain(cfg) -> dict:
    """The parsed config as JSON-friendly data (class_path / init_args as given)."""
    import json

    from jsonargparse import Namespace

    def conv(v):
        if isinstance(v, Namespace):
            return {k: conv(x) for k, x in vars(v).items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        try:
            json.dumps(v)
            return v
        except TypeError:
            return str(v)

    return conv(cfg)


def run_cli(stage: str, argv: list[str]) -> int:
    """Build model, data and trainer from argv and run the stage (``_run``); a version folder reserved for the
    run is removed again if nothing was written into it (a usage error, a signal before any output)."""
    from .run_control import release_unused

    try:
        return _run(stage, argv)
    finally:
        release_unused()


def _run(stage: str, argv: list[str]) -> int:
    """Build model, data and trainer from argv; run ``trainer.fit`` ("fit") or the evaluation ("evaluate": every
    ``compare`` run on the chosen split, a results table and a JSON file).

    A user error (``vidtldr_pl.errors``: missing or malformed data, annotations, checkpoints, options) ends with a
    one-line message and its exit code (2); anything else keeps its traceback.
    """
    wanted = help_requested(argv)
    if wanted == "short":
        print(short_help(stage, config_dir()))
        return 0
    if wanted == "all":
        argv = ["--help" if arg == HELP_ALL_FLAG else arg for arg in argv]
    from argparse import ArgumentError

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    stop = StopOnSignal()
    progress = EvaluationProgress()
    try:
        with stop.installed():
            cli = build_cli(argv, stage)
            check_merge_settings(cli.model, merge_settings_of(cli, stage))  # before any video is decoded
            cli.trainer.callbacks.append(stop)
            if stage == "evaluate":
                _evaluate(cli, progress)
            elif stage == "fit":
                try:
                    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
                except Exception as err:
                    raise (unreadable_resume_checkpoint(err, cli.config.ckpt_path) or err) from None
            else:
                getattr(cli.trainer, stage)(cli.model, datamodule=cli.datamodule)
    except (RunInterrupted, SIGTERMException) as err:  # noqa: B014
        stopped = err if isinstance(err, RunInterrupted) else RunInterrupted(signal.SIGTERM)
        if stage == "evaluate":
            what = progress.summary()
        elif stopped.checkpoint:
            what = (f"at step {stopped.step}; resumable checkpoint {stopped.checkpoint} (resume: "
                    f"--ckpt_path={stopped.checkpoint})")
        else:
            what = "before a resumable point; the checkpoints written so far are kept"
        if is_first_process():
            print(f"error: stopped by {stopped.name} {what}", file=sys.stderr, flush=True)
        return stopped.exit_code
    except ArgumentError as err:  # the parser's: one line (with a "did you mean"), exit code 2
        print(f"error: {parser_error_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # jsonargparse and Lightning wrap what a constructor or hook raised
        cause = user_error_in(err)
        if cause is None:
            raise
        hint = f" ({CHECKPOINT_HINT})" if isinstance(cause, CheckpointError) and "not found" in str(cause) else ""
        print(f"error: {cause}{hint}", file=sys.stderr)
        return getattr(cause, "exit_code", EXIT_USAGE)  # FileNotFoundError has none
    return 0
