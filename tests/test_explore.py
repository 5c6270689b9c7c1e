"""Pure pieces of the sweep / search: Pareto fronts, schedule families, budget fitting, the budget search."""
from __future__ import annotations

import itertools

import pytest

from vidtldr_pl.explore.families import fit_amplitude, front, parse_schedules
from vidtldr_pl.explore.pareto import pareto_front
from vidtldr_pl.explore.searcher import BudgetSearch


def brute_front(points):
    """Indices no other point dominates, by definition."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])
    return sorted((i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)),
                  key=lambda i: (points[i][0], -points[i][1], i))


def test_pareto_front_on_hand_made_points():
    # (GFLOPs, R@1): c dominates b (cheaper, better); e ties a's cost with a lower score; f is the most expensive
    # and the best
    points = [(1.0, 20.0), (1.5, 22.0), (1.4, 25.0), (2.0, 24.0), (1.0, 18.0), (2.5, 30.0)]
    assert pareto_front(points) == [0, 2, 5]
    assert pareto_front(points) == brute_front(points)


def test_pareto_front_matches_the_definition_on_a_grid():
    points = [(c, q) for c, q in itertools.product([1.0, 1.2, 1.3, 2.0], [5.0, 7.0, 6.0])][::2]
    points += [(0.9, 1.0), (3.0, 100.0), (1.2, 7.0)]
    assert pareto_front(points) == brute_front(points)


def test_families_and_explicit_lists():
    assert front(72, 6) == [72, 36, 18, 0, 0, 0]
    got = dict(parse_schedules("front:72;constant:8;delayed:24@2;[5,5];front:72", 6))
    assert got == {"front:72": [72, 36, 18, 0, 0, 0], "constant:8": [8] * 6, "delayed:24@2": [0, 0, 24, 24, 24, 24],
                   "[5,5]": [5, 5, 0, 0, 0, 0]}  # the duplicate front:72 once
    with pytest.raises(ValueError, match="needs 1 to 6"):
        parse_schedules("1,2,3,4,5,6,7", 6)
    with pytest.raises(ValueError, match="unknown schedule family"):
        parse_schedules("back:8", 6)


def test_fit_amplitude_is_the_cheapest_fit():
    cost = lambda s: 100 - sum(s)  # noqa: E731
    r, schedule, c = fit_amplitude(lambda a: front(a, 6), cost, 80.0, 144)
    assert c <= 80 and cost(front(r - 1, 6)) > 80 and schedule == front(r, 6)
    with pytest.raises(ValueError, match="below the cheapest"):
        fit_amplitude(lambda a: front(a, 6), cost, -1000.0, 144)


def toy_problem():
    """cost falls faster for early blocks (as FLOPs do); the optimum (4, 6, 6) spends exactly the budget."""
    cost = lambda s: 100.0 - (3 * s[0] + 2 * s[1] + s[2])  # noqa: E731
    target = (4, 6, 6)
    calls = []

    def objective(s):
        calls.append(tuple(s))
        return -sum((a - b) ** 2 for a, b in zip(s, target))

    return cost, objective, calls, target


def test_search_finds_the_optimum_within_the_budget():
    cost, objective, calls, target = toy_problem()
    budget = 70.0
    assert cost(target) == budget
    seen = []
    search = BudgetSearch(objective, cost, budget, max_r=20, progress=seen.append)
    result = search.run((10, 0, 0), steps=(4, 2, 1), max_evals=60)
    assert result.best == target and result.value == 0
    assert all(h["cost"] <= budget for h in result.history)  # never evaluated over the budget
    assert len(calls) == len(set(calls)) == result.evaluations == len(seen)  # each schedule evaluated once
    best = [h["best"] for h in result.history]
    assert best == sorted(best) and best[-1] == 0  # the curve never goes down
    # the optimum by brute force over every schedule within the budget
    feasible = [s for s in itertools.product(range(21), repeat=3) if cost(s) <= budget]
    assert max(feasible, key=objective) == target


def test_search_respects_max_evals_and_rejects_an_infeasible_start():
    cost, objective, calls, _ = toy_problem()
    result = BudgetSearch(objective, cost, 70.0, max_r=20).run((10, 0, 0), steps=(4, 2, 1), max_evals=3)
    assert result.evaluations <= 3 and len(calls) <= 3
    with pytest.raises(ValueError, match="over the budget"):
        BudgetSearch(objective, cost, 70.0, max_r=20).run((0, 0, 0))
