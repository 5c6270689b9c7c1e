"""Evaluate a video model on a benchmark as a YAML config says: ``python -m vidtldr_pl.evaluate --config X.yaml``
(installed: ``vidtldr-evaluate``; in a checkout: ``python evaluate.py``). ``--help`` lists the options."""
from __future__ import annotations

import sys

from .entry import run


def main(argv: list[str] | None = None) -> int:
    return run("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
