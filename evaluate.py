"""Evaluate a LightningModule on a DataModule from a YAML config (LightningCLI): python evaluate.py --config X.yaml

The config names model / data / trainer as class_path + init_args; token merging is the TokenMerging callback
under trainer.callbacks. ``--config name.yaml`` also finds the file in configs/. The same command installed:
``vidtldr-evaluate`` or ``python -m vidtldr_pl.evaluate``.
"""
import sys

from vidtldr_pl.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
