"""Fit a LightningModule on a DataModule from a YAML config (LightningCLI): python train.py --config X.yaml"""
from __future__ import annotations

import sys

from vidtldr_pl.cli_help import exit_on_short_help

if __name__ == "__main__":
    exit_on_short_help("fit", sys.argv[1:])  # -h / --help at once; --help-all: LightningCLI's full list
    from vidtldr_pl.cli import resolve_config_args, run_cli

    sys.exit(run_cli("fit", resolve_config_args(sys.argv[1:])))
