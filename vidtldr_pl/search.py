"""Schedule search under a budget, training-free: ``python -m vidtldr_pl.search --config configs/demo_umt.yaml
--method vidtldr --budget-gflops 1.31 --out DIR`` (or ``--budget-tokens N``, or ``--budget-of 72,36,18``: the cost
of that schedule).

Searches the per-block r that maximises the validation metric (t2v R@1 / top-1) at the budget (coordinate search
with budget repair, ``vidtldr_pl.explore.searcher``; every schedule evaluated once), on clips decoded once; then
evaluates the start and the best schedule on the test split. Writes ``search.json`` (every evaluation, the test
rows), ``search_curve.png`` / ``.svg`` and ``fragment.yaml`` (the setting to paste into a config).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .catalog import METHOD_NAMES  # the heavy imports happen in run_search, so that --help answers at once
from .errors import exit_code_of

log = logging.getLogger("vidtldr_pl.search")


def plot_search(history: list[dict[str, Any]], out_stem: str | Path, metric_label: str, start_value: float,
                title: str = "") -> list[Path]:
    """Every evaluation's value and the best so far against the evaluation index (PNG + SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [h["index"] + 1 for h in history]
    ax.scatter(xs, [h["value"] for h in history], s=18, alpha=0.6, label="evaluated schedule")
    ax.step(xs, [h["best"] for h in history], where="post", lw=2, label="best so far")
    ax.axhline(start_value, color="gray", ls="--", lw=1, label="start (hand schedule)")
    ax.set_xlabel("evaluations (validation split)")
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "schedule search")
    from .explore.figures import save_figure

    return save_figure(fig, out_stem)


def fragment(method: str, schedule: list[int], budget: str, value: float, metric_label: str) -> str:
    """A config fragment with the searched setting (a ``compare`` row and the TokenMerging callback's r)."""
    r = ", ".join(map(str, schedule))
    return (f"# searched by vidtldr_pl.search at {budget}: validation {metric_label} {value:.2f}\n"
            f"compare:\n  - {{name: {method} searched, method: {method}, r: [{r}]}}\n"
            f"# or in trainer.callbacks: the TokenMerging callback's init_args\n"
            f"#   method: {method}\n#   r: [{r}]\n")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m vidtldr_pl.search", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--method", default="vidtldr", help=f"one of {list(METHOD_NAMES)}")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-gflops", type=float, help="vision-encoder GFLOPs per video")
    budget.add_argument("--budget-tokens", type=int, help="tokens summed over the blocks")
    budget.add_argument("--budget-of", help="the GFLOPs of this schedule (e.g. 72,36,18), which is also the start")
    p.add_argument("--start", default=None, help="start schedule (default: --budget-of, else the front-loaded "
                   "family fitted to the budget)")
    p.add_argument("--max-evals", type=int, default=30, help="validation evaluations at most")
    p.add_argument("--steps", default="16,8,4", help="step sizes (tokens moved between blocks), decreasing")
    p.add_argument("--metric", default=None, help="results key to maximise (default: t2v R@1 / top-1)")
    p.add_argument("--no-test", action="store_true", help="skip the test-split report")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_known_args(argv)


def run_search(args: argparse.Namespace, config_argv: list[str]) -> dict[str, Any]:
    import json

    t_start = time.perf_counter()
    if args.method not in METHOD_NAMES:
        raise ValueError(f"--method {args.method!r}: choose one of {list(METHOD_NAMES)}")
    from .cli import _plain, build_cli
    from .preflight import resolve_config_args
    from .compare import evaluate_runs, write_results
    from .explore import CachedEvalDataModule
    from .explore.families import family_schedule, fit_amplitude, parse_schedule
    from .explore.flops_cost import FlopsCost
    from .explore.searcher import BudgetSearch, SearchResult
    from .merging import MergeSetting, token_counts
    from .sweep import metric_of, quiet_config

    cli = build_cli(quiet_config(resolve_config_args(config_argv)), "evaluate")
    model, trainer = cli.model, cli.trainer
    flops = FlopsCost(model)
    depth, n = flops.depth, flops.num_tokens
    protected = 0
    if args.budget_tokens is not None:
        def cost(s) -> float:
            return float(sum(token_counts(list(s), n, protected, warn=False)))
        budget, unit = float(args.budget_tokens), "tokens"
    else:
        def cost(s) -> float:
            return flops(args.method, list(s))
        unit = "GFLOPs"
        if args.budget_of:
            budget = cost(parse_schedule(args.budget_of, depth)[0][1])
        else:
            budget = float(args.budget_gflops)
    if args.start or args.budget_of:
        start = parse_schedule(args.start or args.budget_of, depth)[0][1]
    else:
        _, start, _ = fit_amplitude(lambda a: family_schedule("front", a, depth), cost, budget, n // 2)
    budget_text = f"{budget:.4g} {unit}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = CachedEvalDataModule(cli.datamodule)
    metric: dict[str, str] = {}

    def objective(s) -> float:
        row = evaluate_runs(trainer, model, data, [MergeSetting(method=args.method, r=list(s))], "validate")[0]
        key, label = metric_of(row, args.metric)
        metric.update(key=key, label=label)
        return float(row[key])

    def progress(entry: dict[str, Any]) -> None:
        print(f"[search {entry['index'] + 1}/{args.max_evals}] r={entry['schedule']} {metric.get('label', '')} "
              f"{entry['value']:.2f} (best {entry['best']:.2f}), {entry['cost']:.4g} {unit}, "
              f"{time.perf_counter() - t_start:.0f} s", flush=True)

    print(f"search: {args.method} at {budget_text} from r={start}, at most {args.max_evals} validation "
          f"evaluations -> {out}", flush=True)
    searcher = BudgetSearch(objective, cost, budget, n // 2, progress)
    result: SearchResult = searcher.run(start, [int(s) for s in args.steps.split(",")], args.max_evals)
    start_value = result.history[0]["value"]
    report: dict[str, Any] = {
        "method": args.method, "budget": budget, "unit": unit, "start": list(start), "best": list(result.best),
        "validation": {"start": start_value, "best": result.value, "metric": metric["key"]},
        "cost": {"start": cost(tuple(start)), "best": result.cost}, "history": result.history,
        "decoded_clips": dict(data.decoded), "search_seconds": round(time.perf_counter() - t_start, 1),
    }
    plot_search(result.history, out / "search_curve", metric["label"], start_value,
                f"{args.method}: validation {metric['label']} at {budget_text}")
    (out / "fragment.yaml").write_text(fragment(args.method, list(result.best), budget_text, result.value,
                                                metric["label"]))
    if not args.no_test:
        settings = [MergeSetting(method=args.method, r=list(start), name=f"{args.method} start {list(start)}"),
                    MergeSetting(method=args.method, r=list(result.best), name=f"{args.method} searched "
                                 f"{list(result.best)}")]
        rows = evaluate_runs(trainer, model, data, settings, "test")
        report["test"] = {"start": rows[0][metric["key"]], "best": rows[1][metric["key"]],
                          "gflops": {"start": rows[0]["gflops"], "best": rows[1]["gflops"]}}
        write_results(rows, out / "search_test.json", {"search": report, "config": _plain(cli.config)})
        delta = report["test"]["best"] - report["test"]["start"]
        print(f"test {metric['label']}: start {list(start)} {report['test']['start']:.2f}, searched "
              f"{list(result.best)} {report['test']['best']:.2f} ({delta:+.2f}); GFLOPs "
              f"{rows[0]['gflops']:.4f} vs {rows[1]['gflops']:.4f}", flush=True)
    report["decoded_clips"] = dict(data.decoded)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "search.json").write_text(json.dumps(report, indent=2))
    print(f"validation {metric['label']}: start {start_value:.2f} -> best {result.value:.2f} with r={list(result.best)} "
          f"after {result.evaluations} evaluations; wrote {out}/search.json, search_curve.png/.svg, fragment.yaml "
          f"in {report['seconds']:.0f} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return exit_code_of(lambda: run_search(args, rest))


if __name__ == "__main__":
    sys.exit(main())
