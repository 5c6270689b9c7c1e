"""Evaluate a LightningModule on a DataModule from a YAML config (LightningCLI): python evaluate.py --config X.yaml

The config names model / data / trainer as class_path + init_args; token merging is the TokenMerging callback
under trainer.callbacks. ``--config name.yaml`` also finds the file in configs/.
"""
from __future__ import annotations

import sys

from vidtldr_pl.cli_help import exit_on_short_help

if __name__ == "__main__":
    exit_on_short_help("evaluate", sys.argv[1:])  # -h / --help at once; --help-all: LightningCLI's full list
    from vidtldr_pl.cli import resolve_config_args, run_cli

    sys.exit(run_cli("evaluate", resolve_config_args(sys.argv[1:])))
