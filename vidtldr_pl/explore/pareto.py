"""Pareto fronts of (cost, quality) points and the accuracy (and loyalty) vs GFLOPs plot (matplotlib, PNG + SVG)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .figures import save_figure


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower-or-equal cost AND higher-or-equal quality, one of them
    strictly), sorted by cost (equal points all kept). points: (cost, quality)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
        elif front and points[i] == points[front[-1]]:  # an equal point is not dominated either
            front.append(i)
    return front


def front_of(rows: Sequence[dict[str, Any]], metric: str) -> list[int]:
    """Pareto-front indices of ``rows`` in (``gflops``, ``metric``), the metric's sign flipped where lower is better
    (``loyalty/kl``)."""
    from ..metrics.loyalty import higher_is_better

    sign = 1.0 if higher_is_better(metric) else -1.0
    return pareto_front([(float(r["gflops"]), sign * float(r[metric])) for r in rows])


MARKERS = "o^sDvP*Xh<>"


def colour(k: int, n: int) -> Any:
    """The colour of the k-th of n methods: matplotlib's 10-colour cycle, tab20 beyond 10 methods."""
    import matplotlib

    return f"C{k}" if n <= 10 else matplotlib.colormaps["tab20"](k % 20)


def _metric_panel(ax: Any, rows: Sequence[dict[str, Any]], metric: str, label: str, title: str) -> None:
    """``metric`` vs GFLOPs, one line per method, and the Pareto front over every row that has the metric."""
    rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
    front = front_of(rows, metric)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for k, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["gflops"])
        xs, ys = [r["gflops"] for r in mine], [r[metric] for r in mine]
        style = dict(marker=MARKERS[k % len(MARKERS)], label=method, alpha=0.85, color=colour(k, len(methods)))
        if len(mine) == 1:
            ax.scatter(xs, ys, s=80, zorder=3, **style)
        else:
            ax.plot(xs, ys, "-", ms=6, lw=1.2, **style)
    fx, fy = [rows[i]["gflops"] for i in front], [rows[i][metric] for i in front]
    ax.step(fx, fy, where="post", color="black", lw=2, alpha=0.35, label="Pareto front", zorder=1)
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
    ax.set_xlabel("vision encoder GFLOPs per video")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)


def plot_pareto(rows: Sequence[dict[str, Any]], metric: str, out_stem: str | Path, title: str = "",
                metric_label: str | None = None, second: str | None = None,
                second_label: str | None = None) -> list[Path]:
    """Panels: ``metric`` vs GFLOPs per method with the Pareto front over all points; beside it ``second`` (e.g. a
    ``loyalty/...`` key, or the accuracy when ``metric`` is one) the same way when given and present; and the
    measured throughput (``videos_per_s``) vs GFLOPs. Writes ``<out_stem>.png`` and ``.svg``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = second if second and any(isinstance(r.get(second), (int, float)) for r in rows) else None
    if second:
        fig, (ax, ax1, ax2) = plt.subplots(1, 3, figsize=(19, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
        _metric_panel(ax1, rows, second, second_label or second, f"{second_label or second} vs GFLOPs")
    else:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    _metric_panel(ax, rows, metric, metric_label or metric, title or f"{metric_label or metric} vs GFLOPs")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for k, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["gflops"])
        speeds = [r.get("videos_per_s") for r in mine]
        if any(isinstance(s, (int, float)) for s in speeds):
            ax2.plot([r["gflops"] for r in mine], [s if isinstance(s, (int, float)) else float("nan") for s in speeds],
                     "-", marker=MARKERS[k % len(MARKERS)], ms=5, lw=1, label=method, alpha=0.85,
                     color=colour(k, len(methods)))
    ax2.set_xlabel("vision encoder GFLOPs per video")
    ax2.set_ylabel("measured videos/s (vision encoder)")
    ax2.grid(alpha=0.3)
    ax2.set_title("measured throughput")
    if not any(isinstance(r.get("videos_per_s"), (int, float)) for r in rows):
        ax2.text(0.5, 0.5, "not measured: each evaluation ran one batch\n(the first batch is the warm-up)",
                 ha="center", va="center", transform=ax2.transAxes, color="0.4")
    return save_figure(fig, out_stem)


__all__ = ["front_of", "pareto_front", "plot_pareto"]
