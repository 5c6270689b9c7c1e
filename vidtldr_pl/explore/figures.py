"""Saving a matplotlib figure the way every plot here is kept: PNG (to look at) and SVG (to print), then closed."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, out_stem: str | Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` as ``<out_stem>.png`` and ``<out_stem>.svg`` (folders created), close it; returns both paths."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


__all__ = ["save_figure"]
