"""Threshold mode (DyMU, Wang et al., NeurIPS 2025): merge every pair whose similarity is above a per-block
threshold, so each video keeps as many tokens as its content needs.

``ThresholdMerge`` wraps any method that plans by bipartite matching (ToMe, vid-TLDR with its saliency-weighted
merge, ...: ``row_budgets`` methods whose plan is a MergePlan): at block l, row b merges every candidate whose best
score exceeds thresholds[l] (at most (count - protected) // 2), through the per-row path of ``merging.rows``.
Thresholds are calibrated as DyMU's ``threshold_finder`` does (``vidtldr_pl.calibrate``): with ``calibrate=True``
every block merges the batch's r x B best pairs (batch-level selection; r the schedule's entry), and the score of
the best pair left unmerged is the batch's threshold; thresholds are the mean over batches. Saved as JSON
(``save_thresholds``) and read back by path (``thresholds="thresholds.json"``).
Without thresholds (none given, or none for a block) a block merges the schedule's fixed r, as the inner method.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .matching import MergePlan, RowBudget
from .methods import MergeMethod, RandomDrop, RepShiftDrop, SaliencyDrop, build_method, register_method
from .schedule import RValue
from .state import AttentionInfo, MergeState

THRESHOLDS_FORMAT = "vidtldr_pl.thresholds/1"


def load_thresholds(source: str | Path | list | tuple | None, method: str | None = None) -> list[float | None] | None:
    """Per-block thresholds from a list (None entries: fixed r there) or a JSON file ``save_thresholds`` wrote;
    method: the inner method asked for, which must be the one the file was calibrated with."""
    if source is None:
        return None
    if isinstance(source, (list, tuple)):
        values = list(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"thresholds file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"thresholds file {str(path)!r} is not JSON: {err}") from err
        if not isinstance(data, dict) or "thresholds" not in data:
            raise ValueError(f"thresholds file {str(path)!r} has no 'thresholds' list")
        if method is not None and data.get("method") not in (None, method):
            raise ValueError(f"thresholds file {str(path)!r} was calibrated for method {data.get('method')!r}, "
                             f"not {method!r}")
        values = data["thresholds"]
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"thresholds[{i}] = {v!r} is not a number or null")
        out.append(None if v is None else float(v))
    return out


def save_thresholds(path: str | Path, thresholds: list[float | None], **meta: Any) -> Path:
    """Write thresholds (one per block, None where the block does not merge) and what they were calibrated on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": THRESHOLDS_FORMAT, **meta, "thresholds": thresholds}, indent=2) + "\n")
    return path


@register_method
class ThresholdMerge(MergeMethod):
    """Threshold mode over a matching method (see the module docstring).

    base: the inner method's name ("tome", "vidtldr", ...); thresholds: a list per block or a JSON path; None:
    the schedule's fixed r. calibrate: merge the batch-level r x B best pairs and record each block's threshold
    in ``observations`` (block -> list of per-batch thresholds). Other options go to the inner method.
    Token counts differ per video (``MergeState.count``), so the schedule's ``token_counts`` give the fixed-r
    counts only: read the real ones from ``MergeState.row_counts``.
    """

    name = "threshold"

    def __init__(self, base: str = "tome", thresholds: str | list | None = None, calibrate: bool = False,
                 proportional_attention: bool = True, protected: int = 0, **options: Any) -> None:
        super().__init__(proportional_attention, protected)
        inner = build_method(base, proportional_attention=proportional_attention, protected=protected, **options)
        drops = (RandomDrop, SaliencyDrop, RepShiftDrop, ThresholdMerge)  # (a drop plan met at run time: ValueError)
        if inner is None or not inner.row_budgets or isinstance(inner, drops):
            raise ValueError(f"threshold mode needs a method that merges by bipartite matching, got base={base!r}")
        self.inner = inner
        self.method_name = inner.name
        self.thresholds = load_thresholds(thresholds, inner.name)
        self.calibrate = bool(calibrate)
        self.observations: dict[int, list[float]] = {}
        self.needs_attention, self.needs_shift, self.position = inner.needs_attention, inner.needs_shift, inner.position

    def _synced_inner(self) -> MergeMethod:
        """The inner method with this wrapper's protected / proportional_attention (``patch`` sets them here)."""
        if (self.inner.protected, self.inner.proportional_attention) != (self.protected, self.proportional_attention):
            self.inner = copy.copy(self.inner)
            self.inner.protected, self.inner.proportional_attention = self.protected, self.proportional_attention
        return self.inner

    def threshold_at(self, layer: int) -> float | None:
        """This block's threshold, or None (fixed r)."""
        if self.thresholds is None or layer >= len(self.thresholds):
            return None
        return self.thresholds[layer]

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int | RowBudget, state: MergeState | None = None
             ) -> MergePlan:
        return self._synced_inner().plan(x, attn, r, state)

    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        inner = self._synced_inner()
        layer = len(state.tokens_per_layer)
        if self.calibrate:
            budget = RowBudget(r=None, count=None, target=r)
            out = inner(x, state, attn, budget)
            if budget.observed is not None:
                self.observations.setdefault(layer, []).append(budget.observed)
            return out
        tau = self.threshold_at(layer)
        if tau is None:
            return inner(x, state, attn, r)
        return inner(x, state, attn, RowBudget(r=None, count=None, threshold=tau))

    def calibrated(self) -> list[float | None]:
        """Per-block mean of the recorded batch thresholds (None where nothing was recorded)."""
        depth = max(self.observations, default=-1) + 1
        return [float(torch.tensor(self.observations[i]).mean()) if i in self.observations else None
                for i in range(depth)]

    def __repr__(self) -> str:
        return f"ThresholdMerge({self.inner!r}, thresholds={self.thresholds}, calibrate={self.calibrate})"


__all__ = ["THRESHOLDS_FORMAT", "ThresholdMerge", "load_thresholds", "save_thresholds"]
