"""Shared LightningCLI plumbing of train.py and evaluate.py (no logic of its own beyond config lookup)."""
from __future__ import annotations

import sys
import warnings
from datetime import datetime
from importlib import resources
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

CHECKPOINT_HINT = (
    "official fine-tuned UMT checkpoints are linked from the UMT / vid-TLDR repositories' MODEL_ZOO; pass the file "
    "with --model.init_args.checkpoint=/path/to/file.pth"
)


def config_dir() -> Path:
    """The configs that ship with the package: the repository's ``configs/`` folder, installed as the package
    ``vidtldr_pl.configs`` (pyproject.toml / setup.py); the folder itself in a checkout that is not installed."""
    try:
        return Path(str(resources.files("vidtldr_pl.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"


def find_config(value: str) -> Path:
    """A config file as given; else a shipped one, by relative path (``strategies/ddp.yaml`` or
    ``configs/strategies/ddp.yaml``) or by name (``msrvtt_umt.yaml``). A missing file: SystemExit, one line."""
    path = Path(value)
    if path.exists():
        return path
    shipped = config_dir()
    if not path.is_absolute():
        relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
        for candidate in (shipped / relative, shipped / path.name):
            if candidate.is_file():
                return candidate
    available = ", ".join(sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.yaml"))) or "none"
    raise SystemExit(f"config file not found: {value} (the shipped configs, {shipped}: {available})")


def resolve_config_args(argv: list[str]) -> list[str]:
    """Let ``--config msrvtt_umt.yaml`` find the shipped configs/msrvtt_umt.yaml from any directory and from an
    installed (non-editable) package; a missing file gives a short message."""
    out = list(argv)
    for i, arg in enumerate(out):
        value = None
        if arg == "--config" and i + 1 < len(out):
            value, pos = out[i + 1], i + 1
        elif arg.startswith("--config="):
            value, pos = arg.split("=", 1)[1], i
        if value is None:
            continue
        path = find_config(value)
        out[pos] = str(path) if arg == "--config" else f"--config={path}"
    return out


class VidTLDRCLI(LightningCLI):
    """LightningCLI (model / data / trainer as class_path + init_args) plus the evaluation options:

    - ``compare``: a list of merge settings (MergeRun: method, r, layers, name) evaluated one after another;
    - ``split``: "test" (default) or "validate";
    - ``results``: the JSON file of the evaluation (default: <log dir or default_root_dir>/results.json);
    - ``ckpt_path``: train.py resumes from this checkpoint.

    Both scripts accept every option, so one config serves both.
    """

    def add_arguments_to_parser(self, parser) -> None:
        from vidtldr_pl.compare import MergeRun

        parser.add_argument("--compare", type=list[MergeRun] | None, default=None,
                            help="merge settings evaluated in a row, e.g. [{method: none}, {method: vidtldr, r: [100]}]")
        parser.add_argument("--split", type=str, default="test", help="evaluation split: test | validate")
        parser.add_argument("--results", type=str | None, default=None, help="JSON file for the evaluation results")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="train.py: resume from this checkpoint (\"last\": the newest in the run folder)")


def build_cli(argv: list[str]) -> VidTLDRCLI:
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # argv is sys.argv here
    return VidTLDRCLI(
        pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        run=False, save_config_callback=None, args=argv,
    )


def _evaluate(cli: VidTLDRCLI) -> None:
    from vidtldr_pl.compare import evaluate_runs, print_results, write_results

    cfg = cli.config
    split = {"val": "validate", "valid": "validate"}.get(cfg.split, cfg.split)
    rows = evaluate_runs(cli.trainer, cli.model, cli.datamodule, cfg.compare, split)
    if cli.trainer.is_global_zero:
        title = f"{type(cli.model).__name__} on {type(cli.datamodule).__name__} ({split} split)"
        print_results(rows, title)
        path = write_results(rows, cfg.results or default_results_path(cli.trainer), _plain(cfg))
        print(f"results written to {path}")


def default_results_path(trainer: pl.Trainer) -> Path:
    """<logger dir>/results.json next to the logs; without a logger <default_root_dir>/outputs/results_<time>.json."""
    if trainer.logger is not None and trainer.log_dir:
        return Path(trainer.log_dir) / "results.json"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(trainer.default_root_dir) / "outputs" / f"results_{stamp}.json"


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
    """Build model, data and trainer from argv; run ``trainer.fit`` ("fit") or the evaluation ("evaluate": every
    ``compare`` run on the chosen split, a results table and a JSON file).

    Missing or malformed inputs (data, annotations, checkpoints) end with a short message and exit code 2.
    """
    from data_modules.annotations import AnnotationError
    from data_modules.video import VideoDecodeError
    from vidtldr_pl.backbones.umt.checkpoint import CheckpointError

    try:
        cli = build_cli(argv)
        if stage == "evaluate":
            _evaluate(cli)
        elif stage == "fit":
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
        else:
            getattr(cli.trainer, stage)(cli.model, datamodule=cli.datamodule)
    except Exception as err:  # jsonargparse wraps errors raised while instantiating classes
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, (FileNotFoundError, CheckpointError, AnnotationError, VideoDecodeError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        hint = f" ({CHECKPOINT_HINT})" if isinstance(cause, CheckpointError) and "not found" in str(cause) else ""
        print(f"error: {cause}{hint}", file=sys.stderr)
        return 2
    return 0
