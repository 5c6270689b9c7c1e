"""Wall-clock truth: does merging pay off in real time? Throughput of a vision encoder per method and schedule over
batch sizes, dtypes and attention kernels, with the merge step's own time split out (issue 26, item 6).

For every (dtype, attention, method, schedule, batch) cell: videos/s and ms per batch (median over ``--iters`` timed
calls after ``--warmup`` untimed ones, in ``torch.inference_mode``; CUDA events + synchronize on CUDA,
``perf_counter`` on CPU), the speed-up over no merging at the same dtype / attention / batch, and the merge step's own
time: a separate eager pass of ``--profile-iters`` calls with timers around every merge slot (``LayerMerge``: the
method's saliency / matching / merge, not the attention or MLP it follows), reported as merge ms per batch and as
its share of that pass. Work a method causes outside its slot is not in the split: explicit vid-TLDR's unbiased
softmax runs inside the attention, the representation shift (RepShift methods) after the MLP. A batch that does
not fit in memory is skipped and said so (larger batches of the same setting too). bf16 = ``torch.autocast`` over
fp32 weights; "fused" attention = ``scaled_dot_product_attention`` (alias ``sdpa``), "explicit" = the N x N map
materialised. ``--compile`` times ``torch.compile``d encoders (warm-up includes compilation; the merge split still
comes from the eager pass).

The model comes from the registry (``--model``, seeded random init; throughput does not depend on the weights and
the schedules fix the token counts); only its first mergeable encoder is timed, through
``benchmarks/encoder_throughput.py``'s helpers. Schedules (``--schedules``) are the sweep's text forms
(``vidtldr_pl.explore.families``): ``"72,36,18"``, ``"front:72"``, ``"constant:8;delayed:16@2"``; by default
``front:<N/4>`` with N the encoder's patch tokens at ``--frames`` (the demo's [72, 36, 18] on umt_demo).

Usage::

    python benchmarks/wall_clock.py --threads 2 --out wall_clock_cpu          # umt_demo, CPU-sized default
    python benchmarks/wall_clock.py --model umt_b16 --frames 12 --schedules 600,200,100 --device cuda --out gpu
    python benchmarks/wall_clock.py --quick --out /tmp/wc                        # tiny sizes (tests)

Writes ``wall_clock.md`` (the tables) and ``wall_clock.json`` (every row) under ``--out``; ``--write FILE``
replaces the ``## Wall-clock truth`` section there.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import encoder_throughput as et  # noqa: E402  (benchmarks/ is not a package)

from vidtldr_pl.backbones import list_models  # noqa: E402
from vidtldr_pl.explore.families import parse_schedules  # noqa: E402
from vidtldr_pl.merging import LayerMerge, METHODS  # noqa: E402

SECTION = "## Wall-clock truth"
DEFAULT_METHODS = ("none", "tome", "vidtldr", "vidtldr_repshift", "random_drop")
ATTENTION_ALIASES = {"explicit": "explicit", "fused": "fused", "sdpa": "fused"}
QUICK = {"model": "umt_tiny", "frames": 4, "batches": (1, 2), "iters": 2, "warmup": 1, "profile_iters": 1}


@dataclass
class WallClockConfig:
    """What one run measures. schedules: the sweep's text form, None = ``front:<N/4>``."""

    model: str = "umt_demo"
    frames: int = 8
    methods: tuple[str, ...] = DEFAULT_METHODS
    schedules: str | None = None
    batches: tuple[int, ...] = (1, 2, 8, 32)
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    attentions: tuple[str, ...] = ("fused", "explicit")
    iters: int = 10
    warmup: int = 3
    profile_iters: int = 3
    compile: bool = False
    compile_backend: str = "inductor"
    saliency_backend: str = "auto"
    seed: int = 0

    def check(self) -> WallClockConfig:
        """ValueError (one line naming the option) on a bad value; returns self with attentions normalised."""
        if self.model not in list_models():
            raise ValueError(f"--model {self.model!r}: not a registered model; choose one of {list_models()}")
        for m in self.methods:
            if m != "none" and m not in METHODS:
                raise ValueError(f"--methods {m!r}: not a merge method; choose none or one of {sorted(METHODS)}")
        for a in self.attentions:
            if a not in ATTENTION_ALIASES:
                raise ValueError(f"--attention {a!r}: choose one of {sorted(ATTENTION_ALIASES)}")
        for d in self.dtypes:
            if d not in et.DTYPES:
                raise ValueError(f"--dtype {d!r}: choose one of {sorted(et.DTYPES)}")
        for name, values, least in (("--batch", self.batches, 1), ("--frames", (self.frames,), 1),
                                    ("--iters", (self.iters,), 1), ("--warmup", (self.warmup,), 0),
                                    ("--profile-iters", (self.profile_iters,), 0)):
            bad = [v for v in values if v < least]
            if bad:
                raise ValueError(f"{name} {bad[0]}: must be >= {least}")
        self.attentions = tuple(dict.fromkeys(ATTENTION_ALIASES[a] for a in self.attentions))
        self.batches = tuple(sorted(set(self.batches)))
        return self


@dataclass
class WallClockRow:
    """One measured (or skipped) cell. status: "ok", "skipped" (note says why) or "error"."""

    method: str
    schedule: str  # label ("front:72", "[72,36,18]"); "-" for none
    r: list[int]
    attention: str
    dtype: str
    batch: int
    compiled: bool
    tokens_per_layer: list[int] = field(default_factory=list)
    gflops: float | None = None
    status: str = "ok"
    note: str = ""
    videos_per_s: float | None = None
    ms_per_batch: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    merge_ms_per_batch: float | None = None  # None without merging
    merge_share: float | None = None  # merge ms / ms of the hooked eager pass; None without merging
    vs_none: float | None = None  # videos/s over the none row of the same dtype / attention / batch


@dataclass
class WallClockReport:
    config: WallClockConfig
    device: str
    num_tokens: int
    depth: int
    schedules: list[tuple[str, list[int]]]
    rows: list[WallClockRow] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- measuring


def _is_oom(err: BaseException) -> bool:
    """CUDA and CPU allocator failures (the CPU allocator says "not enough memory" / "can't allocate")."""
    text = str(err).lower()
    return et._is_oom(err) or "not enough memory" in text or "can't allocate memory" in text


def merge_timing(encoder: nn.Module, video: Tensor, iters: int) -> tuple[float, float] | None:
    """(merge ms per batch, merge share) from iters eager calls with timers around every LayerMerge forward
    (CUDA events on CUDA, so the timers do not serialise the stream; synchronised once at the end): medians over
    the calls of the summed merge spans and of span / call. None without merge slots or iters = 0.
    video: (B, 3, T, H, W)."""
    if iters <= 0 or not any(isinstance(m, LayerMerge) for m in encoder.modules()):
        return None
    device = video.device
    spans: list = []
    calls = []
    with et._merge_hooks(encoder, device, spans):
        for _ in range(iters):
            first = len(spans)
            start = et._mark(device)
            encoder(video)
            calls.append((start, et._mark(device), first, len(spans)))
        et._sync(device)
    merge_ms, shares = [], []
    for start, end, a, b in calls:
        total = et._seconds(start, end)
        merge = sum(et._seconds(s, e) for s, e in spans[a:b])
        merge_ms.append(merge * 1e3)
        shares.append(merge / total if total > 0 else math.nan)
    return statistics.median(merge_ms), statistics.median(shares)


def time_row(encoder: nn.Module, row: WallClockRow, video: Tensor, cfg: WallClockConfig) -> None:
    """Fill row's timings (throughput, then the merge split) for the configured encoder; raises on OOM."""
    device = video.device
    fn: Callable[[Tensor], object] = encoder
    if cfg.compile:
        torch._dynamo.reset()  # a fresh graph per row: no recompile-limit fallback to eager
        fn = torch.compile(encoder, backend=cfg.compile_backend)
    try:
        with torch.inference_mode(), et.precision(device, row.dtype):
            times = et.time_encoder(fn, video, cfg.iters, cfg.warmup)
            split = merge_timing(encoder, video, cfg.profile_iters)
    finally:
        del fn
    row.ms_per_batch = statistics.median(times) * 1e3
    row.ms_min, row.ms_max = min(times) * 1e3, max(times) * 1e3
    row.videos_per_s = statistics.median(row.batch / t for t in times)
    if split is not None:
        row.merge_ms_per_batch, row.merge_share = split


def default_schedule(num_tokens: int, prefix: int) -> str:
    """``front:<N/4>``: N/4, N/8, N/16 tokens removed in the first three blocks (N = patch tokens)."""
    return f"front:{(num_tokens - prefix) // 4}"


def _gflops(encoder: nn.Module, spec: et.RowSpec, frames: int, r: str) -> tuple[float | None, list[int]]:
    report = et.flop_report(encoder, spec, frames, r)
    return report.gflops, list(report.tokens_per_layer)


def run(cfg: WallClockConfig, device: torch.device | str, deadline: float = math.inf,
        log: Callable[[str], None] = print) -> WallClockReport:
    """Measure every cell of cfg on device, in the order dtype > attention > method / schedule > batch (ascending);
    cells still waiting at ``deadline`` (time.monotonic()) are skipped and said so."""
    cfg.check()
    device = torch.device(device)
    encoder = et.build_encoder(cfg.model, device, cfg.frames, cfg.seed)
    depth, prefix = len(encoder.blocks), encoder.num_prefix_tokens
    num_tokens = _tokens(encoder, cfg.frames)
    schedules = parse_schedules(cfg.schedules or default_schedule(num_tokens, prefix), depth)
    report = WallClockReport(cfg, et.device_name(device), num_tokens, depth, schedules)
    settings = [(m, "-", [0] * depth) for m in cfg.methods if m == "none"]
    settings += [(m, label, s) for m in cfg.methods if m != "none" for label, s in schedules]
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    flops: dict[tuple[str, str, str], tuple[float | None, list[int]]] = {}
    for dtype in cfg.dtypes:
        for attention in cfg.attentions:
            for method, label, schedule in settings:
                spec = et.row_spec(attention, method)
                r = ",".join(map(str, schedule))
                key = (attention, method, label)
                if key not in flops:
                    flops[key] = _gflops(encoder, spec, cfg.frames, r)
                gflops, tokens = flops[key]
                too_big: int | None = None
                for batch in cfg.batches:
                    row = WallClockRow(method, label, schedule if method != "none" else [], attention, dtype, batch,
                                       cfg.compile, tokens, gflops)
                    report.rows.append(row)
                    if too_big is not None:
                        row.status, row.note = "skipped", f"batch {too_big} did not fit in memory"
                        continue
                    if time.monotonic() > deadline:
                        row.status, row.note = "skipped", "time guard"
                        continue
                    et.configure(encoder, spec, r, cfg.saliency_backend)
                    video = torch.randn(et.video_shape(encoder, batch, cfg.frames), generator=gen)
                    try:
                        time_row(encoder, row, video.to(device), cfg)
                    except RuntimeError as err:
                        if not _is_oom(err):
                            raise
                        too_big = batch
                        row.status, row.note = "skipped", "out of memory"
                        row.videos_per_s = row.ms_per_batch = None
                    finally:
                        del video
                        et._peak_reset(device)
                    log(_progress(row))
    add_speedups(report.rows)
    return report


def _tokens(encoder: et.MergeableEncoder, frames: int) -> int:
    """Tokens entering the first block for a (1, 3, frames, H, W) input (counted on the meta device)."""
    if encoder.num_tokens:  # built for these frames (build_encoder)
        return int(encoder.num_tokens)
    return int(et.flop_report(encoder, et.row_spec("fused", "none"), frames, "0").tokens_per_layer[0])


def _progress(row: WallClockRow) -> str:
    what = f"{row.dtype} {row.attention} {row.method} {row.schedule} b{row.batch}"
    if row.status != "ok":
        return f"[wall_clock] {what}: {row.status} ({row.note})"
    merge = ("" if row.merge_share is None
             else f", merge {row.merge_ms_per_batch:.2f} ms ({100 * row.merge_share:.1f} %)")
    return f"[wall_clock] {what}: {row.videos_per_s:.3g} videos/s, {row.ms_per_batch:.2f} ms/batch{merge}"


def add_speedups(rows: list[WallClockRow]) -> None:
    """vs_none = videos/s over the "none" row of the same dtype, attention, batch and compile mode."""
    base = {(r.dtype, r.attention, r.batch, r.compiled): r.videos_per_s for r in rows if r.method == "none"}
    for r in rows:
        ref = base.get((r.dtype, r.attention, r.batch, r.compiled))
        if r.method != "none" and r.videos_per_s is not None and ref:
            r.vs_none = r.videos_per_s / ref


# ----------------------------------------------------------------------------------------------- output

COLUMNS = ("attention", "dtype", "batch", "method", "schedule", "tokens after each block", "GFLOPs/video",
           "videos/s", "ms/batch", "merge ms/batch", "merge %", "vs none")
LEFT = {"attention", "dtype", "method", "schedule", "tokens after each block"}


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{fmt}}{suffix}"


def _vps(v: float | None) -> str:
    return _num(v, ".1f" if (v or 0) >= 10 else ".3g")


def row_cells(r: WallClockRow) -> list[str]:
    share = None if r.merge_share is None else 100 * r.merge_share
    speed = r.note if r.status != "ok" else _vps(r.videos_per_s)
    return [r.attention, r.dtype, str(r.batch), et.METHOD_LABELS.get(r.method, r.method), r.schedule,
            et.compact_tokens(r.tokens_per_layer) if r.tokens_per_layer else "-",
            _num(r.gflops, ".1f" if (r.gflops or 0) >= 10 else ".3f"), speed, _num(r.ms_per_batch, ".2f"),
            _num(r.merge_ms_per_batch, ".2f"), _num(share, ".1f"), _num(r.vs_none, ".2f", "x")]


def markdown_table(rows: Sequence[WallClockRow]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in LEFT else "---:" for c in COLUMNS) + "|"]
    return lines + ["| " + " | ".join(row_cells(r)) + " |" for r in rows]


def speedup_table(rows: Sequence[WallClockRow], batches: Sequence[int]) -> list[str]:
    """Per merged setting, one column per batch size: speed-up over no merging and (merge share)."""
    groups: dict[tuple, dict[int, WallClockRow]] = {}
    for r in rows:
        if r.method != "none":
            groups.setdefault((r.attention, r.dtype, r.method, r.schedule), {})[r.batch] = r
    head = ["attention", "dtype", "method", "schedule", *(f"batch {b}" for b in batches)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|"]
    for (attention, dtype, method, schedule), by_batch in groups.items():
        cells = []
        for b in batches:
            r = by_batch.get(b)
            if r is None or r.status != "ok":
                cells.append("-" if r is None else r.note)
            else:
                share = "" if r.merge_share is None else f" ({100 * r.merge_share:.0f} %)"
                cells.append(_num(r.vs_none, ".2f", "x") + share)
        label = et.METHOD_LABELS.get(method, method)
        lines.append("| " + " | ".join([attention, dtype, label, schedule, *cells]) + " |")
    return lines


def caption(report: WallClockReport) -> str:
    cfg = report.config
    parts = [f"{cfg.model} vision encoder at {cfg.frames} frames ({report.num_tokens} tokens, {report.depth} blocks)",
             f"median of {cfg.iters} timed calls after {cfg.warmup} warm-up",
             f"merge ms / % from a separate eager pass of {cfg.profile_iters} calls with timers around each merge slot",
             "bf16 = autocast over fp32 weights", "fused = SDPA, explicit = N x N map materialised",
             "vs none = videos/s over no merging at the same dtype / attention / batch"]
    if cfg.compile:
        parts.append(f"torch.compile (backend {cfg.compile_backend}) rows, warm-up includes compilation")
    return "; ".join(parts)


def section_body(report: WallClockReport, command: str, load: tuple[tuple[float, ...], tuple[float, ...]],
                 date: str) -> str:
    before, after = (", ".join(f"{v:.2f}" for v in x) for x in load)
    lines = [
        f"Measured {date} on {report.device} (Python {platform.python_version()}, torch {torch.__version__}); "
        f"load average (1, 5, 15 min) before: {before}, after: {after}.",
        "",
        f"Command: `{command}`",
        "",
        caption(report) + ".",
        "",
        "Speed-up over no merging by batch size (merge step's share of the encoder time in brackets):",
        "",
        *speedup_table(report.rows, report.config.batches),
        "",
        "Every cell:",
        "",
        *markdown_table(report.rows),
    ]
    return "\n".join(lines)


def report_json(report: WallClockReport, command: str, load: tuple, date: str) -> dict:
    return {"benchmark": "benchmarks/wall_clock.py", "command": command, "date": date, "device": report.device,
            "python": platform.python_version(), "torch": torch.__version__,
            "load_before": list(load[0]), "load_after": list(load[1]), "num_tokens": report.num_tokens,
            "depth": report.depth, "config": dataclasses.asdict(report.config),
            "schedules": [{"label": label, "r": s} for label, s in report.schedules],
            "rows": [dataclasses.asdict(r) for r in report.rows]}


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a registered model (default umt_demo; umt_tiny with --quick)")
    parser.add_argument("--frames", type=int, default=None, help="default 8 (4 with --quick)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="none and / or names in vidtldr_pl.merging.METHODS")
    parser.add_argument("--schedules", default=None,
                        help="the sweep's forms, ';'-separated: '72,36,18', 'front:72', 'constant:8;delayed:16@2' "
                             "(default front:<N/4>)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default 1 2 8 32 (1 2 with --quick)")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--attention", nargs="+", default=["fused", "explicit"], help="fused (= sdpa), explicit")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per cell (default 10; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per cell (default 3; 1 with --quick)")
    parser.add_argument("--profile-iters", type=int, default=None,
                        help="calls of the merge-timing pass (default 3; 1 with --quick; 0: no merge split)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd encoders")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--saliency-backend", default="auto", choices=et.SALIENCY_BACKENDS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for tests: " + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()) + " (explicit options win)")
    parser.add_argument("--out", type=Path, default=None, help="write wall_clock.md and wall_clock.json here")
    parser.add_argument("--write", type=Path, default=None, help=f"replace the {SECTION!r} section of this file")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> WallClockConfig:
    base = {**dataclasses.asdict(WallClockConfig()), **(QUICK if args.quick else {})}

    def pick(value: object, key: str) -> object:
        return base[key] if value is None else value

    return WallClockConfig(
        model=pick(args.model, "model"), frames=pick(args.frames, "frames"), methods=tuple(args.methods),
        schedules=args.schedules, batches=tuple(pick(args.batch, "batches")), dtypes=tuple(args.dtype),
        attentions=tuple(args.attention), iters=pick(args.iters, "iters"), warmup=pick(args.warmup, "warmup"),
        profile_iters=pick(args.profile_iters, "profile_iters"), compile=args.compile,
        compile_backend=args.compile_backend, saliency_backend=args.saliency_backend, seed=args.seed,
    ).check()


def main(argv: Sequence[str] | None = None) -> WallClockReport:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        device = torch.device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        before = os.getloadavg()
        report = run(cfg, device)
    except ValueError as err:  # bad input: one line, exit 2 (as the project's other commands)
        print(f"error: wall_clock: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    load = (before, os.getloadavg())
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python benchmarks/wall_clock.py", *(shlex.quote(a) for a in argv)])
    body = section_body(report, command, load, date)
    print(body)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "wall_clock.md").write_text(f"{SECTION}\n\n{body}\n")
        (args.out / "wall_clock.json").write_text(json.dumps(report_json(report, command, load, date), indent=1))
        print(f"wrote {args.out / 'wall_clock.md'} and {args.out / 'wall_clock.json'}")
    if args.write is not None:
        et.write_section(args.write, body, heading=SECTION)
        print(f"updated {args.write}")
    return report


if __name__ == "__main__":
    main()
