"""Method x schedule sweep in one run: ``python -m vidtldr_pl.sweep --config configs/demo_umt.yaml
--methods none,tome,vidtldr,random_drop --schedules "front:24,48,72,96" --out DIR``.

Every clip of the split is decoded once (``CachedEvalDataModule``) and the captions are encoded once (the task's
text cache); every (method, schedule) point then runs on the kept tensors. Writes ``sweep.json`` (rows, decode
count, timings), ``sweep.md`` (a table) and ``pareto.png`` / ``pareto.svg`` (metric vs GFLOPs with the Pareto front,
measured throughput beside). Schedules: ``--schedules`` (explicit lists or families, see
``vidtldr_pl.explore.families``) and / or ``--budgets-gflops 1.2,1.4 --family front`` (each method's family
amplitude fitted to each budget). Any other option goes to the config (``--data.init_args.num_test=100``).

Loyalty (``vidtldr_pl.metrics.loyalty``): every row also reports its agreement with the unmerged ("none") row of the
same sweep (added first when ``--methods`` lacks it), under ``loyalty/...`` keys in ``sweep.json``, one column in
``sweep.md`` and the table, and as the plot's second panel (``--loyalty-metric``; ``--metric loyalty/<name>`` puts it
first, the accuracy second). ``--no-loyalty`` turns it off.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from .catalog import METHOD_NAMES
from .errors import exit_code_of

if TYPE_CHECKING:  # the heavy imports happen in the functions, so that --help answers at once
    from .explore.flops_cost import FlopsCost
    from .merging import MergeSetting

log = logging.getLogger("vidtldr_pl.sweep")
METRICS = (("itm/img_r1", "t2v R@1"), ("top1", "top-1"), ("acc", "accuracy"), ("itc/img_r1", "t2v R@1 (ITC)"))


def metric_of(row: dict[str, Any], wanted: str | None = None) -> tuple[str, str]:
    """(key, label) of the quality metric of a results row: ``wanted`` or the first known one present."""
    from .metrics.loyalty import LABELS

    if wanted:
        if wanted not in row:
            raise ValueError(f"--metric {wanted!r} is not in the results (have {sorted(k for k in row if '/' in k or k.startswith('top'))})")
        return wanted, {**dict(METRICS), **LABELS}.get(wanted, wanted)
    for key, label in METRICS:
        if isinstance(row.get(key), (int, float)):
            return key, label
    raise ValueError(f"no known metric in the results row: {sorted(row)}")


def second_metric_of(rows: list[dict[str, Any]], metric: str, wanted: str | None = None) -> tuple[str, str] | None:
    """(key, label) of the plot's second panel: the loyalty key (``wanted`` or the task's table one) beside an
    accuracy, the accuracy beside a loyalty key; None when the rows have no loyalty."""
    from .metrics.loyalty import LABELS, PREFIX, TABLE_KEYS

    row = next((r for r in rows if any(k.startswith(PREFIX) for k in r)), None)
    if row is None:
        return None
    if metric.startswith(PREFIX):
        return metric_of(row)
    if wanted:
        if wanted not in row:
            raise ValueError(f"--loyalty-metric {wanted!r} is not in the results (have "
                             f"{sorted(k for k in row if k.startswith(PREFIX))})")
        return wanted, LABELS.get(wanted, wanted)
    return next(((k, LABELS.get(k, k)) for k, _ in TABLE_KEYS if k in row), None)


def loyalty_column(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(key, header) of the one loyalty column of the tables (``metrics.loyalty.TABLE_KEYS``), None without one."""
    from .metrics.loyalty import TABLE_KEYS

    return next(((k, h) for k, h in TABLE_KEYS if any(k in r for r in rows)), None)


def parse_variants(text: str) -> dict[str, tuple[str, dict]]:
    """``--variants``: ";"-separated ``LABEL=METHOD:{json options}`` -> {label: (method, options)}, e.g.
    ``tome_spatial=tome_video:{"neighbourhood": "spatial"}``. A label then works in ``--methods`` like a method
    name (``all`` adds every variant), so one method runs with several option sets in one sweep."""
    from .merging import build_method

    variants: dict[str, tuple[str, dict]] = {}
    for item in (t.strip() for t in text.split(";")):
        if not item:
            continue
        label, sep, rest = item.partition("=")
        method, _, options = rest.partition(":")
        label, method = label.strip(), method.strip()
        if not sep or not label or method not in METHOD_NAMES:
            raise ValueError(f"--variants {item!r}: expected LABEL=METHOD:{{json options}} with METHOD one of "
                             f"{list(METHOD_NAMES)}")
        if label == "none" or label in METHOD_NAMES:
            raise ValueError(f"--variants {item!r}: the label {label!r} is a method's name; choose another")
        try:
            opts = json.loads(options) if options.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"--variants {item!r}: the options are not JSON ({err.msg})") from None
        if not isinstance(opts, dict):
            raise ValueError(f"--variants {item!r}: the options must be a JSON object")
        build_method(method, **opts)  # an unknown option fails here, before any evaluation
        variants[label] = (method, opts)
    return variants


def check_methods(text: str, variants: dict[str, tuple[str, dict]] | None = None) -> list[str]:
    """The methods of ``--methods``: comma-separated names or ``--variants`` labels, ``all`` = none, every method
    of the table and every variant."""
    variants = variants or {}
    if text.strip() == "all":
        return ["none", *METHOD_NAMES, *variants]
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m != "none" and m not in METHOD_NAMES and m not in variants]
    if unknown or not methods:
        raise ValueError(f"--methods {text!r}: unknown {unknown}; choose from "
                         f"{['none', *METHOD_NAMES, *variants]}")
    return methods


def build_settings(methods: list[str], schedules: list[tuple[str, list[int]]], cost: FlopsCost,
                   budgets: list[float] = (), family: str = "front",
                   variants: dict[str, tuple[str, dict]] | None = None) -> list[tuple[MergeSetting, str]]:
    """(setting, schedule label) for "none" once, then every schedule for every method (schedule-major, so that a
    sweep stopped early still compares all methods), then every budget for every method (the family's amplitude
    fitted to the budget with that method's own FLOPs). A method that reduces the input before the first block
    (rlt, frame_stride, resize: r unused) gets one row with its default options, after "none"."""
    from .explore.families import family_schedule, fit_amplitude
    from .merging import METHODS, MergeSetting

    spec = {m: (variants or {}).get(m, (m, None)) for m in methods if m != "none"}  # label -> (method, options)

    def setting(label: str, r: list[int] | None, name: str) -> MergeSetting:
        method, options = spec[label]
        return MergeSetting(method=method, r=r, method_options=options, name=name)

    out: list[tuple[MergeSetting, str]] = []
    if "none" in methods:
        out.append((MergeSetting(method="none", name="none"), "-"))
    merging = [m for m in spec if METHODS[spec[m][0]].position != "input"]
    out += [(setting(m, None, m), "-") for m in spec if METHODS[spec[m][0]].position == "input"]
    for label, schedule in schedules:
        for method in merging:
            out.append((setting(method, schedule, f"{method} {label}"), label))
    for budget in budgets:
        for method in merging:
            r, schedule, g = fit_amplitude(lambda a: family_schedule(family, a, cost.depth),
                                           lambda s: cost(spec[method][0], s, spec[method][1]), budget,
                                           cost.num_tokens // 2)
            label = f"{family}:{r} (<= {budget:g} GFLOPs)"
            out.append((setting(method, schedule, f"{method} {label}"), label))
    return out


def method_label(setting: MergeSetting) -> str:
    """What a sweep row calls its method: the method, or the ``--variants`` label for one with options (the
    setting's name up to the schedule)."""
    if not setting.method_options:
        return setting.method
    return (setting.name or setting.method).split(" ")[0]


def markdown_table(rows: list[dict[str, Any]], metric: str, label: str) -> str:
    """One line per point: method, schedule, metric, the loyalty column (when the rows have loyalty), GFLOPs, tokens
    after the last block, videos/s, Pareto mark (in GFLOPs and ``metric``)."""
    from .compare import format_speed
    from .explore.pareto import front_of

    front = set(front_of(rows, metric))
    loyal = loyalty_column(rows)
    extra = loyal if loyal and loyal[0] != metric else None
    head = f" {extra[1]} |" if extra else ""
    lines = [f"| method | schedule | {label} |{head} GFLOPs | tokens at the end | videos/s | Pareto |",
             "|---|---|---:|" + ("---:|" if extra else "") + "---:|---:|---:|:-:|"]
    for i, r in enumerate(rows):
        tokens = r.get("tokens_per_layer") or ["-"]
        digits = 3 if metric.startswith("loyalty/") else 2
        cell = ""
        if extra:
            value = r.get(extra[0])
            cell = f" {value:.3f} |" if isinstance(value, (int, float)) else " - |"
        lines.append(f"| {r['method']} | {r.get('schedule_label', '-')} | {r[metric]:.{digits}f} |{cell} "
                     f"{r['gflops']:.3f} | {tokens[-1]} | {format_speed(r)} | {'*' if i in front else ''} |")
    return "\n".join(lines) + "\n"


def quiet_config(argv: list[str]) -> list[str]:
    """No per-batch progress bar for the many evaluations (each point prints one line) unless argv sets one."""
    if any(a.startswith("--trainer.enable_progress_bar") for a in argv):
        return argv
    return [*argv, "--trainer.enable_progress_bar=false"]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m vidtldr_pl.sweep", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--methods", default="none,tome,vidtldr,random_drop,saliency_drop",
                   help=f"comma-separated methods: none and any of {list(METHOD_NAMES)}; all: every one")
    p.add_argument("--variants", default="", help='";"-separated LABEL=METHOD:{json options}, e.g. '
                   '\'tome_spatial=tome_video:{"neighbourhood": "spatial"}\'; each LABEL is then a method of --methods')
    p.add_argument("--schedules", default="front:24,48,72,96,120,144",
                   help='";"-separated explicit lists ([72,36,18]) or families (front:24,48 constant:8 delayed:24@2)')
    p.add_argument("--budgets-gflops", default="", help="comma-separated GFLOPs budgets; each method's --family "
                   "amplitude is fitted to each")
    p.add_argument("--family", default="front", help="family for --budgets-gflops (front, constant, delayed)")
    p.add_argument("--split", default="test", choices=("test", "validate"))
    p.add_argument("--metric", default=None, help="results key to plot (default: t2v R@1 / top-1), e.g. "
                   "loyalty/top1_agreement")
    p.add_argument("--loyalty-metric", default=None, help="loyalty key of the plot's second panel (default: "
                   "loyalty/top1_agreement for classification, loyalty/t2v_top5_overlap for retrieval)")
    p.add_argument("--no-loyalty", action="store_true", help="no loyalty to the unmerged row (and no unmerged row "
                   "added when --methods lacks none)")
    p.add_argument("--loyalty-max-mb", type=float, default=2048.0, help="most memory (MiB) the unmerged row's "
                   "per-video outputs may take for loyalty (above it: no loyalty, warned)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--append", action="store_true", help="add this run's points to the sweep.json already in --out "
                   "(the same config, split and clips; the unmerged reference is evaluated again for loyalty and not "
                   "added twice), then rewrite the table and the plot")
    p.add_argument("--replot", action="store_true", help="only redraw sweep.md and the plot from <out>/sweep.json")
    p.add_argument("--plot", default=None, help="path stem of the plot (<stem>.png / .svg; default <out>/pareto)")
    return p.parse_known_args(argv)


def replot(out: Path, metric: str | None = None, loyalty_metric: str | None = None,
           stem: str | Path | None = None) -> None:
    """Rewrite sweep.md and the plot (``<stem>.png`` / ``.svg``, default ``<out>/pareto``) from a finished (or
    partial) sweep.json."""
    payload = json.loads((out / "sweep.json").read_text())
    rows, meta = payload["runs"], (payload.get("config") or {}).get("sweep", {})
    key, label = metric_of(rows[0], metric or meta.get("metric"))
    (out / "sweep.md").write_text(markdown_table(rows, key, label))
    title = f"{label} vs GFLOPs ({meta.get('split', 'test')} split, {meta.get('decoded_clips', '?')} clips)"
    write_plot(rows, key, label, Path(stem) if stem else out / "pareto", title,
               loyalty_metric or meta.get("loyalty_metric"))


def write_plot(rows: list[dict[str, Any]], key: str, label: str, stem: Path, title: str,
               loyalty_metric: str | None = None) -> None:
    """The Pareto plot of ``key`` with its second panel (``second_metric_of``) beside it."""
    from .explore.pareto import plot_pareto

    second = second_metric_of(rows, key, loyalty_metric)
    plot_pareto(rows, key, stem, title=title, metric_label=label, second=second[0] if second else None,
                second_label=second[1] if second else None)


def run_sweep(args: argparse.Namespace, config_argv: list[str]) -> dict[str, Any]:
    """Build the config's model / data / trainer, decode the split once, evaluate every point; write the outputs."""
    from .cli import build_cli
    from .preflight import resolve_config_args
    from .compare import (REFERENCE_NAME, LoyaltyReference, LoyaltyTask, evaluate_runs, format_speed, is_reference,
                          print_results, write_results)
    from .explore import CachedEvalDataModule, parse_schedules
    from .explore.flops_cost import FlopsCost
    from .merging import MergeSetting

    t_start = time.perf_counter()
    variants = parse_variants(args.variants)
    methods = check_methods(args.methods, variants)
    if args.no_loyalty and any((m or "").startswith("loyalty/") for m in (args.metric, args.loyalty_metric)):
        raise ValueError(f"--metric {args.metric!r} / --loyalty-metric {args.loyalty_metric!r}: loyalty is off "
                         "(--no-loyalty)")
    cli = build_cli(quiet_config(resolve_config_args(config_argv)), "evaluate")
    model, trainer = cli.model, cli.trainer
    cost = FlopsCost(model)
    schedules = parse_schedules(args.schedules, cost.depth) if args.schedules.strip() else []
    budgets = [float(b) for b in args.budgets_gflops.split(",") if b.strip()]
    settings = build_settings(methods, schedules, cost, budgets, args.family, variants)
    loyalty = None if args.no_loyalty else LoyaltyReference(args.loyalty_max_mb)
    if loyalty is not None and isinstance(model, LoyaltyTask) and not any(is_reference(s) for s, _ in settings):
        settings.insert(0, (MergeSetting(method="none", name=REFERENCE_NAME), "-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = read_sweep(out / "sweep.json") if args.append else None  # read before this run rewrites the file
    data = CachedEvalDataModule(cli.datamodule)
    split = args.split
    print(f"sweep: {len(settings)} points ({', '.join(methods)}) on the {split} split -> {out}", flush=True)

    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"split": split, "points": len(settings)}
    for k, (setting, label) in enumerate(settings):
        t0 = time.perf_counter()
        row = evaluate_runs(trainer, model, data, [setting], split, loyalty)[0]
        row.update(schedule_label=label, method=method_label(setting), name=setting.label, r=setting.r,
                   method_options=setting.method_options,
                   seconds=round(time.perf_counter() - t0, 2))
        rows.append(row)
        key, metric_label = metric_of(row, args.metric)
        loyal = loyalty_column([row])
        loyal_text = f", {loyal[1]} {row[loyal[0]]:.3f}" if loyal else ""
        print(f"[{k + 1}/{len(settings)}] {setting.label}: {metric_label} {row[key]:.2f}{loyal_text}, "
              f"{row['gflops']:.3f} GFLOPs, "
              f"{format_speed(row)} videos/s ({row['seconds']:.0f} s); clips decoded so far: "
              f"{data.decoded.get(split, 0)}", flush=True)
        meta.update(decoded_clips=data.decoded.get(split, 0), evaluations=data.loads.get(split, 0),
                    seconds=round(time.perf_counter() - t_start, 1))
        write_results(appended(earlier, rows), out / "sweep.json", provenance(earlier, {**vars(args), **meta}, cli))

    key, metric_label = metric_of(rows[0], args.metric)
    clips = data.decoded.get(split, 0)
    expected = _split_size(cli.datamodule, split)
    print(f"decoded {clips} clips for {len(rows)} evaluations of the {split} split"
          + (f" ({expected} clips in the split: each decoded once)" if expected is not None else ""), flush=True)
    meta.update(decoded_clips=clips, split_clips=expected, seconds=round(time.perf_counter() - t_start, 1),
                metric=key, loyalty_reference=loyalty.name if loyalty else None)
    if earlier is not None:
        check_comparable(earlier, out / "sweep.json", split, clips)
        rows = appended(earlier, rows)
    write_results(rows, out / "sweep.json", provenance(earlier, {**vars(args), **meta}, cli))
    (out / "sweep.md").write_text(markdown_table(rows, key, metric_label))
    plot = Path(args.plot) if args.plot else out / "pareto"
    write_plot(rows, key, metric_label, plot, f"{metric_label} vs GFLOPs ({split} split, {clips} clips)",
               args.loyalty_metric)
    if trainer.is_global_zero:
        print_results(rows, f"sweep on the {split} split")
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {plot}.png, {plot}.svg "
          f"in {meta['seconds']:.0f} s", flush=True)
    return {"rows": rows, **meta}


def provenance(earlier: dict[str, Any] | None, this_run: dict[str, Any], cli: Any) -> dict[str, Any]:
    """The ``sweep`` / ``config`` entries of sweep.json: this run's; after ``--append`` the earlier run's, with this
    run's options and timing listed under ``sweep.appended``."""
    from .cli import _plain

    if earlier is None:
        return {"sweep": this_run, "config": _plain(cli.config)}
    first = (earlier.get("config") or {}).get("sweep", {})
    return {"sweep": {**first, "appended": [*first.get("appended", []), this_run]},
            "config": (earlier.get("config") or {}).get("config")}


def read_sweep(path: Path) -> dict[str, Any] | None:
    """An earlier sweep.json (for ``--append``), None when there is none yet."""
    return json.loads(path.read_text()) if path.is_file() else None


def appended(earlier: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of an earlier sweep.json followed by this run's, less the unmerged rows the earlier run has."""
    if earlier is None:
        return rows
    before = earlier["runs"]
    have_reference = any(r.get("method") == "none" for r in before)
    return before + [r for r in rows if not (have_reference and r.get("method") == "none")]


def check_comparable(earlier: dict[str, Any], path: Path, split: str, clips: int) -> None:
    """A ValueError when the earlier sweep ran on another split or number of clips (its points would not compare)."""
    meta = (earlier.get("config") or {}).get("sweep", {})
    if meta.get("split") != split or meta.get("decoded_clips") != clips:
        raise ValueError(f"--append: {path} was swept on the {meta.get('split')} split with "
                         f"{meta.get('decoded_clips')} clips, this run on the {split} split with {clips}")


def _split_size(datamodule: Any, split: str) -> int | None:
    """Clips in the split when the DataModule says (retrieval: num_videos of the split's index)."""
    index = getattr(datamodule, "index", None)
    if callable(index):
        try:
            return len(index(split).videos)
        except Exception:  # noqa: BLE001 - a DataModule without indices
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return exit_code_of(lambda: replot(Path(args.out), args.metric, args.loyalty_metric, args.plot) if args.replot
                        else run_sweep(args, rest))


if __name__ == "__main__":
    sys.exit(main())
