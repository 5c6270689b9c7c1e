"""The command-line entry of evaluate and train (``evaluate.py`` / ``train.py`` in a checkout, ``python -m
vidtldr_pl.evaluate`` / ``vidtldr-evaluate`` when installed, the same for train): the short help and every check
that needs no model run before torch and Lightning are imported (``preflight``); then the LightningCLI run."""
from __future__ import annotations

import sys

from .cli_help import exit_on_short_help
from .errors import UsageError
from .preflight import check


def run(stage: str, argv: list[str] | None = None) -> int:
    """``stage``: "evaluate" or "fit". Returns the exit code (0, 2 for a usage error or a missing input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    exit_on_short_help(stage, argv)  # -h / --help at once; --help-all: LightningCLI's full list
    try:
        argv = check(argv, stage)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    from .cli import run_cli

    return run_cli(stage, argv)


__all__ = ["run"]
