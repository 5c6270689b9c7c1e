"""Evaluate one model under several merge settings in a row (none / ToMe / vid-TLDR ...) and report them side by side.

Each run replaces the trainer's ``TokenMerging`` callback, calls ``trainer.test`` (or ``validate``) and collects the
task's ``results``; the task keeps its text features between runs, so captions are encoded once. Rows print as one
table and are written as JSON.

Loyalty (``metrics.loyalty``): with a ``LoyaltyReference`` the unmerged ("none") run is evaluated first (added when
the runs have none) and its per-video outputs (a task's ``loyalty_outputs()``) are kept, for the whole comparison
only; every row then gets ``loyalty/...`` keys against them. That is one evaluation's outputs in memory: N x C
float64 class distributions plus N x views x D pooled features (classification), 3 Nv x Nt float32 score matrices plus
Nv x E embeddings (retrieval); e.g. 0.5 MB for the action demo, 3.3 MB for the retrieval demo, ~12 MB for MSR-VTT 1k.
Above ``max_mb`` (default 2048 MiB) no reference is kept and the rows have no loyalty (a warning says so).

YAML (evaluate.py)::

    compare:
      - {name: no merging, method: none}
      - {name: ToMe, method: tome, r: [100, 40, 20]}
      - {name: vid-TLDR, method: vidtldr, r: [100, 40, 20]}
"""
from __future__ import annotations

import json
import logging
import platform
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from rich.console import Console
from rich.table import Table

from .callbacks import TokenMerging
from .callbacks.measure import NOT_TIMED, EncoderStats
from .flops.report import compact_tokens
from .merging import MergeSetting
from .metrics.loyalty import TABLE_KEYS, loyalty, outputs_nbytes
from .metrics.retrieval import READABLE_NAMES

log = logging.getLogger(__name__)
REFERENCE_NAME = "none (loyalty reference)"


@runtime_checkable
class LoyaltyTask(Protocol):
    """A task that keeps the per-video outputs of its last evaluation (ClassificationTask, RetrievalTask)."""

    def loyalty_outputs(self) -> dict[str, torch.Tensor] | None: ...


def is_reference(setting: MergeSetting | None) -> bool:
    """Whether a run is the unmerged model (method "none") that loyalty is measured against."""
    return setting is not None and setting.method == "none"


class LoyaltyReference:
    """The unmerged run's per-video outputs, kept while a comparison / sweep runs, and the loyalty of each run to them.

    max_mb: the most memory (MiB) the kept outputs may take; above it loyalty is off for this comparison (warned).
    ``outputs`` / ``name``: the reference's outputs and row name once evaluated.
    """

    def __init__(self, max_mb: float = 2048.0) -> None:
        if max_mb <= 0:
            raise ValueError(f"loyalty max_mb must be > 0, got {max_mb}")
        self.max_mb = max_mb
        self.outputs: dict[str, torch.Tensor] | None = None
        self.name: str | None = None
        self.off = False

    @staticmethod
    def plan(runs: list[MergeSetting], model: Any) -> list[MergeSetting]:
        """The runs in evaluation order: the first unmerged run moved to the front, or an unmerged run
        (``REFERENCE_NAME``) added there when there is none; unchanged for a task without loyalty outputs."""
        runs = list(runs)
        if not runs or not isinstance(model, LoyaltyTask):
            return runs
        first = next((i for i, run in enumerate(runs) if is_reference(run)), None)
        if first is None:
            return [MergeSetting(method="none", name=REFERENCE_NAME), *runs]
        return [runs[first], *runs[:first], *runs[first + 1:]]

    def score(self, setting: MergeSetting | None, model: Any) -> dict[str, float]:
        """The ``loyalty/...`` keys of the evaluation ``model`` just finished (under ``setting``); the first unmerged
        run becomes the reference (its own loyalty is exactly 1 / KL 0). Empty when there is nothing to compare."""
        outputs = model.loyalty_outputs() if isinstance(model, LoyaltyTask) and not self.off else None
        if outputs is None:
            return {}
        if self.outputs is None:
            if not is_reference(setting):
                log.warning("loyalty: %s ran before any unmerged run; it has no loyalty",
                            setting.label if setting else "the run")
                return {}
            size = outputs_nbytes(outputs) / 2**20
            if size > self.max_mb:
                log.warning("loyalty off: the unmerged outputs take %.0f MiB > max_mb %.0f", size, self.max_mb)
                self.off = True
                return {}
            self.outputs, self.name = outputs, setting.label
        return loyalty(self.outputs, outputs)


def _merging_callback(trainer: pl.Trainer) -> TokenMerging | None:
    found = [cb for cb in trainer.callbacks if isinstance(cb, TokenMerging)]
    return found[0] if found else None


def use_merging(trainer: pl.Trainer, run: MergeSetting) -> TokenMerging:
    """Replace the trainer's TokenMerging callback by one for ``run``, keeping the old callback's target, and its
    attention mode and source tracing unless the run sets them (a fresh callback's without one)."""
    old = _merging_callback(trainer) or TokenMerging()
    setting = replace(run, attention=run.attention or old.setting.attention,
                      trace_source=run.trace_source or old.setting.trace_source)
    new = TokenMerging(**vars(setting), target=old.target)
    callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, TokenMerging)]
    trainer.callbacks = callbacks + [new]
    return new


def evaluate_runs(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule,
                  runs: list[MergeSetting] | None, split: str = "test",
                  loyalty: LoyaltyReference | None = None) -> list[dict[str, Any]]:
    """Evaluate ``model`` once per run (or once with the configured callbacks when ``runs`` is empty).

    Returns one dict per run: ``name``, ``method``, ``r``, the task's ``results`` (metrics) and what the
    ``EncoderStats`` callback measured (tokens_per_layer, videos_per_s, gflops, merge_gmacs; added if missing).
    loyalty: keep the unmerged run's outputs there and add ``loyalty/...`` keys to every row (``runs`` reordered by
    ``LoyaltyReference.plan`` while it has no reference yet, so a row may be added: the unmerged one).
    """
    if split not in ("test", "validate"):
        raise ValueError(f"split must be 'test' or 'validate', got {split!r}")
    stats = next((cb for cb in trainer.callbacks if isinstance(cb, EncoderStats)), None)
    if stats is None:
        stats = EncoderStats()
        trainer.callbacks.append(stats)
    rows = []
    take_skipped = getattr(datamodule, "take_skipped", None)  # videos skipped under skip_errors (data_modules.skips)
    if loyalty is not None and loyalty.outputs is None and runs:
        runs = loyalty.plan(runs, model)
    for run in runs or [None]:
        callback = use_merging(trainer, run) if run is not None else _merging_callback(trainer)
        stats.results = {}
        if callable(take_skipped):
            take_skipped()  # forget what an earlier stage skipped
        logged = getattr(trainer, split)(model, datamodule=datamodule, verbose=False)
        setting = callback.setting if callback else MergeSetting()
        row: dict[str, Any] = {"name": setting.label, "method": setting.method, "r": setting.r,
                               "layers": setting.layers}
        results = getattr(model, "results", None)
        if results is None:  # any other LightningModule: what it logged
            results = {k: v for d in logged or [] for k, v in d.items()}
        row.update(results)
        row.update({k: v for k, v in stats.results.items() if k not in row})
        if loyalty is not None and run is not None:
            row.update(loyalty.score(setting, model))
        skipped = _all_ranks(take_skipped()) if callable(take_skipped) else []
        if skipped:
            row["skipped_videos"] = skipped
        rows.append(row)
    return rows


def _all_ranks(skipped: list[dict[str, str]]) -> list[dict[str, str]]:
    """Every process's skipped videos (each once) when the evaluation ran distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return skipped
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, skipped)
    merged = {item["video"]: item for part in parts for item in part or []}
    return sorted(merged.values(), key=lambda item: item["video"])


def skipped_note(rows: list[dict[str, Any]]) -> str | None:
    """One line for under the table: how many videos were skipped (skip_errors) and which (the JSON has all)."""
    names = list(dict.fromkeys(item["video"] for row in rows for item in row.get("skipped_videos") or []))
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
    return (f"{len(names)} video(s) skipped as unreadable (skip_errors): {shown} "
            "(skipped_videos in the results JSON)")


TABLE_COLUMNS = (
    ("t2v R@1", "itm/img_r1"), ("t2v R@5", "itm/img_r5"), ("t2v R@10", "itm/img_r10"), ("t2v MdR", "itm/img_MdR"),
    ("v2t R@1", "itm/txt_r1"), ("v2t R@5", "itm/txt_r5"), ("v2t R@10", "itm/txt_r10"), ("v2t MdR", "itm/txt_MdR"),
)
ITC_COLUMNS = tuple((header, key.replace("itm/", "itc/")) for header, key in TABLE_COLUMNS)  # dual encoders
CLASSIFICATION_COLUMNS = (("top-1", "top1"), ("top-5", "top5"))


def results_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    """The rows as a rich table. Retrieval rows: ITM re-ranked metrics both ways (ITC for a dual encoder, which has no
    ITM); classification rows: top-1 / top-5;
    QA / multiple-choice rows: accuracy, and per question type when the annotations have types; then one loyalty
    column when the rows have loyalty (``metrics.loyalty.TABLE_KEYS``: top-1 agreement for classification, t2v top-5
    overlap for retrieval, else the feature cosine; the JSON has every key); all then GFLOPs (and
    the ratio to the first row), tokens per layer and throughput (per video for retrieval, per view for
    classification, where one video is several views). Other tasks: every number they logged."""
    table = Table(title=title)
    table.add_column("method", justify="left")
    known = next((cols for cols in (TABLE_COLUMNS, ITC_COLUMNS, CLASSIFICATION_COLUMNS)
                  if rows and all(key in rows[0] for _, key in cols)), None)
    if known is None and rows and "acc" in rows[0]:
        types = [k for k in rows[0] if k.startswith("acc/")]
        known = (("acc", "acc"), *((k.removeprefix("acc/"), k) for k in types))
    if known:
        columns = list(known)
    else:
        skip = {"name", "method", "r", "layers"}
        columns = [(k, k) for k in dict.fromkeys(k for row in rows for k, v in row.items()
                                                 if k not in skip and isinstance(v, (int, float)))]
    if known:
        loyal = next(((h, k) for k, h in TABLE_KEYS if any(k in row for row in rows)), None)
        columns += [loyal] if loyal else []
    for header, _ in columns:
        table.add_column(header, justify="right")
    per_view = known is CLASSIFICATION_COLUMNS
    base_row = reference_row(rows)
    gflops_header = "GFLOPs/view" if per_view else "GFLOPs"
    if base_row is not None and base_row.get("method", "none") != "none" and len(rows) > 1:
        gflops_header += f" (x: vs {base_row['name']})"  # no unmerged row: say what the ratio is against
    extra = (gflops_header, "tokens per layer", ("views/s" if per_view else "videos/s"))
    for header in extra if known else ():
        table.add_column(header, justify="left" if header == "tokens per layer" else "right")
    base = base_row.get("gflops") if base_row is not None else None
    for row in rows:
        cells = [row["name"]]
        cells += [_fmt(row.get(key), 1 if "MdR" in key else 3 if key.startswith("loyalty/") else 2)
                  for _, key in columns]
        if known:
            gflops = row.get("gflops")
            ratio = f" ({base / gflops:.2f}x)" if gflops and base and row is not base_row else ""
            cells.append(f"{gflops:.2f}{ratio}" if gflops is not None else "-")
            tokens = row.get("tokens_per_layer")
            cells.append(compact_tokens(tokens) if tokens else "-")
            cells.append(format_speed(row))
        table.add_row(*cells)
    return table


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row GFLOPs ratios are taken against: the first unmerged ("none") row, else the first row."""
    return next((row for row in rows if row.get("method") == "none"), rows[0] if rows else None)


def format_speed(row: dict[str, Any]) -> str:
    """videos/s of a results row, one decimal; ``n/a (one batch)`` when only the warm-up batch ran."""
    speed = row.get("videos_per_s")
    if isinstance(speed, (int, float)) and speed > 0:
        return f"{speed:.1f}"
    return NOT_TIMED if row.get("tokens_per_layer") else "-"


def _fmt(value: Any, digits: int) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def write_results(rows: list[dict[str, Any]], path: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write the rows (plus date, versions and the config) as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "metric_names": READABLE_NAMES,
        "runs": rows,
        "config": config,
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def print_results(rows: list[dict[str, Any]], title: str = "", console: Console | None = None) -> None:
    table = results_table(rows, title)
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or log file: the whole table, not one squeezed into 80 columns ("38…")
            width = console.measure(table, options=console.options.update(max_width=10_000)).maximum
            console = Console(width=max(console.width, width))
    console.print(table)
    note = skipped_note(rows)
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)


__all__ = ["CLASSIFICATION_COLUMNS", "LoyaltyReference", "LoyaltyTask", "REFERENCE_NAME", "evaluate_runs",
           "is_reference", "results_table", "write_results",
           "print_results", "use_merging"]
