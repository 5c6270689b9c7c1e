"""Shared LightningCLI plumbing of train.py and evaluate.py (no logic of its own beyond config lookup)."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CHECKPOINT_HINT = (
    "official fine-tuned UMT checkpoints are linked from the UMT / vid-TLDR repositories' MODEL_ZOO; pass the file "
    "with --model.init_args.checkpoint=/path/to/file.pth"
)


def resolve_config_args(argv: list[str]) -> list[str]:
    """Let ``--config msrvtt_umt.yaml`` find configs/msrvtt_umt.yaml; a missing file gives a short message."""
    out = list(argv)
    for i, arg in enumerate(out):
        value = None
        if arg == "--config" and i + 1 < len(out):
            value, pos = out[i + 1], i + 1
        elif arg.startswith("--config="):
            value, pos = arg.split("=", 1)[1], i
        if value is None:
            continue
        path = Path(value)
        if not path.exists() and (CONFIG_DIR / path.name).exists():
            path = CONFIG_DIR / path.name
        if not path.exists():
            available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))) or "none"
            raise SystemExit(f"config file not found: {value} (configs/ has: {available})")
        out[pos] = str(path) if arg == "--config" else f"--config={path}"
    return out


def run_cli(stage: str, argv: list[str]) -> int:
    """Build model, data and trainer from argv; run trainer.<stage> ("fit", "validate" or "test").

    Missing or malformed inputs (data, annotations, checkpoints) end with a short message and exit code 2.
    """
    from data_modules.annotations import AnnotationError
    from vidtldr_pl.backbones.umt.checkpoint import CheckpointError

    try:
        cli = LightningCLI(
            pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            run=False, save_config_callback=None, args=argv,
        )
        getattr(cli.trainer, stage)(cli.model, datamodule=cli.datamodule)
    except Exception as err:  # jsonargparse wraps errors raised while instantiating classes
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, (FileNotFoundError, CheckpointError, AnnotationError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        hint = f" ({CHECKPOINT_HINT})" if isinstance(cause, CheckpointError) and "not found" in str(cause) else ""
        print(f"error: {cause}{hint}", file=sys.stderr)
        return 2
    return 0
