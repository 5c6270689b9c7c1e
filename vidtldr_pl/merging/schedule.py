"""Merge schedules: how many tokens each block removes.

A schedule is a list with one entry per block: 0 (no merge), a count (int >= 1) or a fraction in (0, 1) of the
tokens entering that block (truncated, as official). Every entry is capped at (N - protected) // 2.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any
from ..errors import ScheduleError

RValue = int | float
log = logging.getLogger(__name__)


def _check_value(value: object, where: str) -> RValue:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ScheduleError(f"r{where} = {value!r} is not a number (expected a count >= 1, a fraction in (0, 1) or 0)")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise ScheduleError(f"r{where} = {value!r} is not finite")
    if v < 0:
        raise ScheduleError(f"r{where} = {value!r} is negative")
    if v >= 1:
        if v != int(v):
            raise ScheduleError(f"r{where} = {value!r}: a count must be a whole number (fractions must be < 1)")
        return int(v)
    return 0 if v == 0 else v


def _parse_text(r: str) -> RValue | list[RValue]:
    parts = [p for p in r.replace("[", "").replace("]", "").replace(",", " ").split() if p]
    try:
        values = [float(p) if any(c in p for c in ".eE") else int(p) for p in parts]
    except ValueError as err:
        raise ScheduleError(f"r = {r!r} is not a number or a comma-separated list of numbers") from err
    return values[0] if len(values) == 1 and "," not in r and "[" not in r else values


def build_schedule(r: RValue | Sequence[RValue] | str | None, depth: int, layers: Sequence[int] | None = None) -> list[RValue]:
    """Resolve r into one entry per block.

    r: a list (entry i for block i; shorter lists are padded with 0), or one number applied at ``layers``
    (all blocks when layers is None, as ToMe does), or a string such as "600,200,100". depth: the model's blocks.
    """
    if depth <= 0:
        raise ScheduleError(f"depth must be positive, got {depth}")
    if isinstance(r, str):
        r = _parse_text(r)
    if r is None:
        return [0] * depth
    if isinstance(r, Sequence):
        if layers is not None:
            raise ScheduleError("give either a per-layer r list or one r with `layers`, not both")
        if len(r) > depth:
            raise ScheduleError(f"r has {len(r)} entries but the model has only {depth} blocks: {list(r)}")
        values = [_check_value(v, f"[{i}]") for i, v in enumerate(r)]
        return values + [0] * (depth - len(values))
    value = _check_value(r, "")
    if layers is None:
        return [value] * depth
    schedule: list[RValue] = [0] * depth
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ScheduleError(f"layers must be block indices, got {layer!r}")
        if not -depth <= layer < depth:
            raise ScheduleError(f"layer {layer} is out of range for a model with {depth} blocks")
        schedule[layer] = value
    return schedule


def effective_r(r: RValue, num_tokens: int, protected: int = 0) -> int:
    """Tokens actually removed from num_tokens: int(N * r) for a fraction, else r; capped at (N - protected) // 2."""
    count = int(num_tokens * r) if r < 1 else int(r)
    return max(0, min(count, (num_tokens - protected) // 2))


def token_counts(schedule: Sequence[RValue], num_tokens: int, protected: int = 0, warn: bool = True,
                 method: Any = None, grid: Any = None) -> list[int]:
    """Tokens left after each block for an input of num_tokens tokens (warns when an entry is capped).

    method / grid (a MergeMethod and the TokenGrid of the input): ask the method how many tokens it really removes
    for each capped r (``MergeMethod.tokens_removed``, e.g. a multiple of the frames for per-frame merging) and
    follow the grid through ``MergeMethod.grid_after``; without a method every block removes its capped r.
    """
    counts = []
    n = num_tokens
    for i, r in enumerate(schedule):
        eff = effective_r(r, n, protected)
        if warn and r >= 1 and eff < r:
            log.warning("r[%d] = %s exceeds half of the %d tokens at that block: capped at %d", i, r, n, eff)
        if method is not None and eff:
            removed = method.tokens_removed(eff, grid)
            grid = method.grid_after(grid, eff)
            eff = removed
        n -= eff
        counts.append(n)
    return counts
