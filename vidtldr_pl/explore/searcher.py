"""Training-free search of a per-block r schedule under a cost budget (pure Python: objective and cost are given).

Coordinate search with budget repair: from the current schedule, a move takes ``step`` tokens off block i's r and
gives block j the smallest r that brings the cost back under the budget (cost must not increase with any r), so
every candidate spends the budget; moves between neighbouring blocks first, then to and from the first block.
The first improving move is taken; when a full pass at a step finds none, the step halves. Every schedule is
evaluated once (cache).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Schedule = tuple[int, ...]


@dataclass
class SearchResult:
    """best: the best schedule found; value: its objective; cost: its cost. history: one dict per evaluation
    (``index``, ``schedule``, ``value``, ``cost``, ``best``: best value so far), in order."""

    best: Schedule
    value: float
    cost: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return len(self.history)


class BudgetSearch:
    """objective(schedule) -> value to maximise (expensive: cached); cost(schedule) -> cost (cheap, must not
    increase when any r grows); budget: the cost limit; max_r: per block, the largest useful r (one int for all).
    progress(entry): called after every evaluation."""

    def __init__(self, objective: Callable[[Schedule], float], cost: Callable[[Schedule], float], budget: float,
                 max_r: int | Sequence[int], progress: Callable[[dict[str, Any]], None] | None = None,
                 tolerance: float = 1e-9) -> None:
        self.objective, self.cost, self.budget = objective, cost, budget
        self.max_r = max_r
        self.progress = progress
        self.tolerance = tolerance
        self.values: dict[Schedule, float] = {}
        self.history: list[dict[str, Any]] = []

    def _cap(self, i: int) -> int:
        return self.max_r if isinstance(self.max_r, int) else int(self.max_r[i])

    def feasible(self, s: Schedule) -> bool:
        return self.cost(s) <= self.budget * (1 + self.tolerance)

    def evaluate(self, s: Schedule) -> float:
        if s not in self.values:
            value = float(self.objective(s))
            self.values[s] = value
            best = max(self.values.values())
            entry = {"index": len(self.history), "schedule": list(s), "value": value, "cost": self.cost(s),
                     "best": best}
            self.history.append(entry)
            if self.progress is not None:
                self.progress(entry)
        return self.values[s]

    def repair(self, s: Schedule, j: int) -> Schedule | None:
        """s with the smallest r_j (>= s[j]) that fits the budget; None when even the cap does not."""
        if self.feasible(s):
            return s
        def at(v: int) -> Schedule:
            return s[:j] + (v,) + s[j + 1:]
        lo, hi = s[j], self._cap(j)
        if hi <= lo or not self.feasible(at(hi)):
            return None
        while hi - lo > 1:  # at(lo) over budget, at(hi) within
            mid = (lo + hi) // 2
            if self.feasible(at(mid)):
                hi = mid
            else:
                lo = mid
        return at(hi)

    def moves(self, s: Schedule, step: int) -> list[Schedule]:
        """Candidates one move away: step tokens off block i, block j repaired; neighbours first, then with the
        first block, then any pair."""
        depth = len(s)
        pairs = [(i, i + d) for d in (1, -1) for i in range(depth) if 0 <= i + d < depth]
        pairs += [(i, j) for i in range(depth) for j in range(depth) if i != j and (i, j) not in pairs]
        out: list[Schedule] = []
        for i, j in pairs:
            if s[i] < step:
                continue
            moved = s[:i] + (s[i] - step,) + s[i + 1:]
            fixed = self.repair(moved, j)
            if fixed is not None and fixed != s and fixed not in out:
                out.append(fixed)
        return out

    def run(self, start: Sequence[int], steps: Sequence[int] = (16, 8, 4, 2), max_evals: int = 40,
            pairs_per_pass: int | None = None) -> SearchResult:
        """Search from ``start`` (must fit the budget) with decreasing step sizes, at most ``max_evals``
        evaluations of the objective (``start`` included). pairs_per_pass: candidates tried per pass (all when
        None)."""
        current = tuple(int(v) for v in start)
        if not self.feasible(current):
            raise ValueError(f"start schedule {list(current)} costs {self.cost(current):g}, over the budget "
                             f"{self.budget:g}")
        best_value = self.evaluate(current)
        for step in steps:
            improved = True
            while improved and len(self.values) < max_evals:
                improved = False
                candidates = self.moves(current, step)[:pairs_per_pass]
                for cand in candidates:
                    if len(self.values) >= max_evals and cand not in self.values:
                        break
                    value = self.evaluate(cand)
                    if value > best_value:
                        current, best_value, improved = cand, value, True
                        break
        return SearchResult(current, best_value, self.cost(current), self.history)


__all__ = ["BudgetSearch", "SearchResult"]
