"""Fit a LightningModule on a DataModule from a YAML config (LightningCLI): python train.py --config X.yaml
(installed: ``vidtldr-train`` or ``python -m vidtldr_pl.train``)."""
import sys

from vidtldr_pl.train import main

if __name__ == "__main__":
    sys.exit(main())
