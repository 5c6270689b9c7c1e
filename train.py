"""Fit a LightningModule on a DataModule from a YAML config (LightningCLI): python train.py --config X.yaml"""
from __future__ import annotations

import sys

from vidtldr_pl.cli import resolve_config_args, run_cli

if __name__ == "__main__":
    sys.exit(run_cli("fit", resolve_config_args(sys.argv[1:])))
