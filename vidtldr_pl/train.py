"""Fine-tune a video model as a YAML config says: ``python -m vidtldr_pl.train --config X.yaml`` (installed:
``vidtldr-train``; in a checkout: ``python train.py``). ``--help`` lists the options."""
from __future__ import annotations

import sys

from .entry import run


def main(argv: list[str] | None = None) -> int:
    return run("fit", argv)


if __name__ == "__main__":
    sys.exit(main())
