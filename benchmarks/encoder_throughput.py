"""Vision-encoder throughput of a registered model: videos/s, peak memory and GFLOPs with and without token merging.

Rows (``--rows``, all five by default), for every (dtype, frames, batch):

* ``ref-none`` / ``ref-vidtldr``: the reference path (``attention="explicit"``: the N x N map is materialised,
  saliency from the unbiased probabilities, the official vid-TLDR semantics), without / with vid-TLDR;
* ``fast-none`` / ``fast-tome`` / ``fast-vidtldr``: the fast path (``attention="fused"``:
  ``scaled_dot_product_attention``, vid-TLDR saliency recomputed exactly from q / k: the Triton kernels on CUDA,
  query chunks in PyTorch elsewhere; ``--saliency-backend`` forces one) without merging, with ToMe and with vid-TLDR;
* on request, ``flex-none`` / ``flex-vidtldr``: FlexAttention with the log-size bias as a score_mod instead of SDPA
  (``attention="flex"``), to pick the fastest exact kernel on a GPU;
* on request, the fast path with the other registered methods: ``fast-vidtldr_repshift`` (vid-TLDR with the
  Representation-Shift saliency: no attention map, no q / k pass), ``fast-random_drop``, ``fast-saliency_drop``,
  ``fast-repshift_drop``.

The model comes from the registry (``vidtldr_pl.backbones.create_model``, ``--model``: UMT-B/16 by default,
``videomae_b16`` and every other registered name work); only its first mergeable encoder is kept and timed (random
init, seeded; throughput does not depend on the weights, and merge schedules fix the token counts). Each row's
setting is applied with ``vidtldr_pl.merging.apply_merge``. bf16 runs under ``torch.autocast`` (weights stay
fp32). Each cell is the median over ``--iters`` timed iterations after ``--warmup`` untimed ones (CUDA events +
synchronize on CUDA, ``perf_counter`` on CPU), in ``torch.inference_mode``. "merge %" is the share of encoder time spent inside the
merge modules (``LayerMerge``), measured in a separate eager pass with forward hooks so that the hooks do not
disturb the main timing. GFLOPs per video are counted on the meta device (torch unit: 2 per multiply-add).

Usage::

    python benchmarks/encoder_throughput.py                          # UMT-B/16, 8 and 12 frames, batch 1/16/32, bf16 + fp32
    python benchmarks/encoder_throughput.py --check --write BENCHMARKS.md   # + fp32 exactness check, (re)write the section
    python benchmarks/encoder_throughput.py --compile                # torch.compile the fast rows
    python benchmarks/encoder_throughput.py --model videomae_b16 --frames 16 --r 400,133,67   # VideoMAE-B/16
    python benchmarks/encoder_throughput.py --model umt_tiny --frames 4 --batch 2 --dtype fp32 --iters 2 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.backbones import create_model, list_models
from vidtldr_pl.flops import FlopReport, encoder_flops
from vidtldr_pl.flops.report import compact_tokens
from vidtldr_pl.merging import (
    SALIENCY_BACKENDS,
    LayerMerge,
    MergeableEncoder,
    MergeSetting,
    apply_merge,
    find_mergeable,
    negative_entropy_from_probs,
    negative_entropy_from_qk,
)
from vidtldr_pl.merging.saliency import resolve_saliency_backend

SECTION = "## Encoder throughput"
MSRVTT_R = "600,200,100"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PATHS = {"explicit": "reference", "fused": "fast", "flex": "flex"}  # attention mode -> row path
KEY_PREFIX = {"reference": "ref", "fast": "fast", "flex": "flex"}
METHOD_LABELS = {"none": "none", "tome": "ToMe", "vidtldr": "vid-TLDR", "random": "random",
                 "vidtldr_repshift": "vid-TLDR RepShift", "random_drop": "random drop",
                 "saliency_drop": "saliency drop", "repshift_drop": "RepShift drop"}


@dataclass(frozen=True)
class RowSpec:
    """One benchmark row: attention path and merge method."""

    key: str
    path: str  # "reference" | "fast" | "flex"
    attention: str  # "explicit" | "fused" | "flex"
    method: str  # "none" | "tome" | "vidtldr"

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)


def row_spec(attention: str, method: str) -> RowSpec:
    """The row of one attention mode ("explicit", "fused", "flex") and merge method (any name in
    ``vidtldr_pl.merging.METHODS``, or "none"); key ``<ref|fast|flex>-<method>``."""
    path = PATHS[attention]
    return RowSpec(f"{KEY_PREFIX[path]}-{method}", path, attention, method)


ROW_SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        row_spec("explicit", "none"),
        row_spec("explicit", "vidtldr"),
        row_spec("fused", "none"),
        row_spec("fused", "tome"),
        row_spec("fused", "vidtldr"),
        row_spec("flex", "none"),
        row_spec("flex", "vidtldr"),
        row_spec("fused", "vidtldr_repshift"),
        row_spec("fused", "random_drop"),
        row_spec("fused", "saliency_drop"),
        row_spec("fused", "repshift_drop"),
    )
}
DEFAULT_ROWS = ["ref-none", "ref-vidtldr", "fast-none", "fast-tome", "fast-vidtldr"]


@dataclass
class RowResult:
    """Measurements of one row. videos_per_s is None when the row failed (error says why, e.g. OOM)."""

    spec: RowSpec
    frames: int
    batch: int
    dtype: str
    gflops: float
    tokens_per_layer: list[int]
    videos_per_s: float | None = None
    ms_per_batch: float | None = None
    peak_gib: float | None = None
    merge_share: float | None = None
    vs_no_merge: float | None = None
    vs_ref_vidtldr: float | None = None
    error: str | None = None


@dataclass
class CheckResult:
    """fp32 reference vid-TLDR vs fast vid-TLDR on the same input and weights."""

    frames: int
    batch: int
    max_abs_diff: float  # over the output tokens (inf when the shapes differ)
    max_abs_diff_pooled: float
    tokens_ref: list[int]
    tokens_fast: list[int]
    saliency_rel_err: float = math.nan  # raw saliency at the first merging block (same input on both paths)
    same_sources: bool = False  # the same original tokens in every output token
    saliency_backend: str = "chunked"

    @property
    def same_tokens(self) -> bool:
        return self.tokens_ref == self.tokens_fast

    def describe(self) -> str:
        same = "yes" if self.same_tokens else f"NO (reference {self.tokens_ref}, fast {self.tokens_fast})"
        return (f"{self.frames} frames, batch {self.batch}, fast saliency {self.saliency_backend}: "
                f"max |ref - fast| = {self.max_abs_diff:.2e} (tokens), {self.max_abs_diff_pooled:.2e} (pooled); "
                f"raw saliency relative error {self.saliency_rel_err:.1e} (first merging block); "
                f"same tokens merged: {'yes' if self.same_sources else 'NO'}; "
                f"same tokens per layer: {same} [{compact_tokens(self.tokens_fast)}]")


@dataclass
class Report:
    results: list[RowResult] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- model setup


def build_encoder(model: str, device: torch.device | str, frames: int, seed: int = 0) -> MergeableEncoder:
    """The first mergeable encoder of the registered model ``model`` (``create_model(model, num_frames=frames)``,
    seeded random init, built directly on device; the rest of the model, e.g. UMT's text encoder, is dropped), in
    eval mode without gradients. Input: (B, 3, T, H, W).

    The sin-cos position table follows the input's frame count, so one encoder serves every ``--frames`` value.
    """
    names = list_models()
    if model not in names:
        raise ValueError(f"unknown model {model!r}; choose one of {names}")
    torch.manual_seed(seed)
    with torch.device(device):
        full = create_model(model, num_frames=frames)
    encoders = find_mergeable(full)
    if not encoders:
        raise ValueError(f"model {model!r} has no mergeable encoder")
    return encoders[0].eval().requires_grad_(False)


def video_shape(encoder: MergeableEncoder, batch: int, frames: int) -> tuple[int, ...]:
    """(batch, 3, frames, H, W) for the encoder's configured image size."""
    shape = list(encoder.example_input(1, "meta").shape)
    shape[0], shape[2] = batch, frames
    return tuple(shape)


def merge_setting(spec: RowSpec, r: str, saliency_backend: str = "auto", trace_source: bool = False) -> MergeSetting:
    """The row's MergeSetting: its attention mode and method with schedule r ("none": no merging);
    saliency_backend: vid-TLDR's q / k saliency ("auto": the Triton kernels on CUDA, chunked PyTorch elsewhere)."""
    options = {"saliency_backend": saliency_backend} if spec.method in ("vidtldr", "saliency_drop") else None
    return MergeSetting(method=spec.method, r=None if spec.method == "none" else r, attention=spec.attention,
                        method_options=options, trace_source=trace_source)


def configure(encoder: MergeableEncoder, spec: RowSpec, r: str, saliency_backend: str = "auto",
              trace_source: bool = False) -> MergeableEncoder:
    """Apply the row's setting to encoder (in place, through ``apply_merge``)."""
    apply_merge(encoder, merge_setting(spec, r, saliency_backend, trace_source))
    return encoder


def precision(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16: autocast (weights stay fp32); fp32: nothing."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def flop_report(encoder: MergeableEncoder, spec: RowSpec, frames: int, r: str) -> FlopReport:
    """GFLOPs per video of the row's configuration (``encoder_flops``: counted on the meta device, shapes only,
    the encoder's weights untouched; the saliency is counted as the chunked path computes it: one q k^T per
    merging layer; flex rows are counted as their SDPA twin, since FlexAttention does not run on the meta device
    and does the same arithmetic). Leaves the encoder configured for that count: configure it again to run."""
    if spec.attention == "flex":
        spec = dataclasses.replace(spec, attention="fused")
    configure(encoder, spec, r, saliency_backend="chunked")
    return encoder_flops(encoder, video_shape(encoder, 1, frames))


# ----------------------------------------------------------------------------------------------- timing


def _mark(device: torch.device) -> torch.cuda.Event | float:
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _seconds(start: torch.cuda.Event | float, end: torch.cuda.Event | float) -> float:
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_encoder(fn: Callable[[Tensor], object], video: Tensor, iters: int, warmup: int) -> list[float]:
    """Seconds per call of fn(video) for iters timed calls after warmup untimed ones (caller sets the modes)."""
    device = video.device
    for _ in range(warmup):
        fn(video)
    _sync(device)
    times = []
    for _ in range(iters):
        start = _mark(device)
        fn(video)
        end = _mark(device)
        _sync(device)
        times.append(_seconds(start, end))
    return times


@contextlib.contextmanager
def _merge_hooks(encoder: nn.Module, device: torch.device, spans: list) -> Iterator[None]:
    """Record (start, end) marks around every LayerMerge forward into spans."""
    handles = []
    for module in encoder.modules():
        if isinstance(module, LayerMerge):
            starts: list = []
            handles.append(module.register_forward_pre_hook(lambda m, a, s=starts: s.append(_mark(device))))
            handles.append(module.register_forward_hook(lambda m, a, o, s=starts: spans.append((s.pop(), _mark(device)))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_merge_share(encoder: nn.Module, video: Tensor, iters: int) -> float | None:
    """Fraction of encoder time spent inside LayerMerge modules (eager, hooked pass; None without merging)."""
    if iters <= 0 or not any(isinstance(m, LayerMerge) for m in encoder.modules()):
        return None
    device = video.device
    spans: list = []
    totals = []
    with _merge_hooks(encoder, device, spans):
        for _ in range(iters):
            start = _mark(device)
            encoder(video)
            totals.append((start, _mark(device)))
        _sync(device)
    total = sum(_seconds(a, b) for a, b in totals)
    merge = sum(_seconds(a, b) for a, b in spans)
    return merge / total if total > 0 else None


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def measure_row(encoder: nn.Module, spec: RowSpec, video: Tensor, dtype: str, args: argparse.Namespace,
                flops: FlopReport) -> RowResult:
    """Time one configured row: throughput and peak memory, then the merge-share profiling pass."""
    device = video.device
    frames, batch = video.shape[2], video.shape[0]
    row = RowResult(spec, frames, batch, dtype, flops.gflops, list(flops.tokens_per_layer))
    fn: Callable[[Tensor], object] = encoder
    if args.compile and spec.path in ("fast", "flex"):
        torch._dynamo.reset()  # a fresh graph per row: no recompile-limit fallback to eager
        fn = torch.compile(encoder)
    try:
        with torch.inference_mode(), precision(device, dtype):
            _peak_reset(device)
            times = time_encoder(fn, video, args.iters, args.warmup)
            row.peak_gib = _peak_gib(device)
            row.merge_share = profile_merge_share(encoder, video, args.profile_iters)
    except RuntimeError as err:
        if not _is_oom(err):
            raise
        row.error = "OOM"
        return row
    finally:
        del fn
        _peak_reset(device)
    row.ms_per_batch = statistics.median(times) * 1e3
    row.videos_per_s = statistics.median(batch / t for t in times)
    return row


def add_ratios(results: list[RowResult]) -> None:
    """Speedups: merged rows vs no merging on the same path; fast vid-TLDR (either saliency) also vs reference
    vid-TLDR."""
    index = {(r.spec.key, r.frames, r.batch, r.dtype): r for r in results}

    def vps(key: str, r: RowResult) -> float | None:
        other = index.get((key, r.frames, r.batch, r.dtype))
        return other.videos_per_s if other is not None else None

    for r in results:
        if r.videos_per_s is None or r.spec.method == "none":
            continue
        base = vps({"reference": "ref-none", "fast": "fast-none", "flex": "flex-none"}[r.spec.path], r)
        r.vs_no_merge = r.videos_per_s / base if base else None
        if r.spec.key in ("fast-vidtldr", "flex-vidtldr", "fast-vidtldr_repshift"):
            ref = vps("ref-vidtldr", r)
            r.vs_ref_vidtldr = r.videos_per_s / ref if ref else None


# ----------------------------------------------------------------------------------------------- check


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def non_degenerate_weights(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every matrix as randn / sqrt(fan_in) (qkv x 2), as tests/test_merging.py does. The std-0.02 init
    gives near-uniform attention: the raw saliency then spans ~1e-4 across tokens, so its min-max normalisation
    turns one ulp of rounding into a different saliency and the comparison measures noise, not the two paths."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if p.ndim >= 2:
                w = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5 * (2.0 if "qkv" in name else 1.0)
                p.copy_(w)
    return encoder


def check_exactness(encoder: MergeableEncoder, frames: int, batch: int, r: str, seed: int = 0,
                    saliency_backend: str = "auto") -> CheckResult:
    """fp32 (TF32 off): reference vid-TLDR vs fast vid-TLDR, same weights, same input (use
    ``non_degenerate_weights`` first: see there). Compares the output tokens (B, N', C) and their mean over tokens
    ("pooled", (B, C)), which original tokens every output token holds, and the raw saliency at the first merging
    block (whose input is the same on both paths)."""
    device = next(encoder.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    video = torch.randn(video_shape(encoder, batch, frames), generator=gen).to(device)
    backend = resolve_saliency_backend(saliency_backend, device)
    outs, raw = {}, {}
    with torch.inference_mode(), _no_tf32():
        for key in ("ref-vidtldr", "fast-vidtldr"):
            configure(encoder, ROW_SPECS[key], r, backend, trace_source=True)
            first = next(m for m in encoder.modules() if isinstance(m, LayerMerge) and m.r)

            def grab(module: nn.Module, args: tuple, key: str = key) -> None:
                attn = args[2]
                raw[key] = (negative_entropy_from_probs(attn.probs) if attn.probs is not None
                            else negative_entropy_from_qk(attn.q, attn.k, backend=backend))

            handle = first.register_forward_pre_hook(grab)
            try:
                state = encoder.new_merge_state()
                tokens = encoder(video, state)
            finally:
                handle.remove()
            outs[key] = tokens.float(), tokens.float().mean(dim=1), list(state.tokens_per_layer), state.source
    (t_ref, p_ref, n_ref, s_ref), (t_fast, p_fast, n_fast, s_fast) = outs["ref-vidtldr"], outs["fast-vidtldr"]
    diff = (t_ref - t_fast).abs().max().item() if t_ref.shape == t_fast.shape else math.inf
    rel = ((raw["fast-vidtldr"] - raw["ref-vidtldr"]).abs() / raw["ref-vidtldr"].abs()).max().item()
    same_sources = s_ref.shape == s_fast.shape and bool(torch.equal(s_ref > 0, s_fast > 0))
    return CheckResult(frames, batch, diff, (p_ref - p_fast).abs().max().item(), n_ref, n_fast, rel, same_sources,
                       backend)


# ----------------------------------------------------------------------------------------------- output

COLUMNS = ("path", "merge", "frames", "batch", "dtype", "tokens after each block", "GFLOPs/video", "videos/s",
           "ms/batch", "peak GiB", "merge %", "vs no merge", "vs ref vid-TLDR")
LEFT = {"path", "merge", "dtype", "tokens after each block"}


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def _gflops(g: float) -> str:
    return f"{g:.1f}" if g >= 10 else f"{g:.3g}"


def row_cells(r: RowResult) -> list[str]:
    """The table cells of one row (shared by the terminal and the Markdown table)."""
    failed = r.error is not None
    share = None if r.merge_share is None else 100 * r.merge_share
    return [
        r.spec.path, r.spec.label, str(r.frames), str(r.batch), r.dtype, compact_tokens(r.tokens_per_layer),
        _gflops(r.gflops),
        r.error if failed else _num(r.videos_per_s, ".1f" if (r.videos_per_s or 0) >= 10 else ".3g"),  # CPU: < 1 video/s
        _num(r.ms_per_batch, ".1f"), _num(r.peak_gib, ".2f"), _num(share, ".1f"),
        _num(r.vs_no_merge, ".2f", "x"), _num(r.vs_ref_vidtldr, ".2f", "x"),
    ]


def caption(args: argparse.Namespace, device: torch.device) -> str:
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    parts = [
        *(["bf16 = torch.autocast(bfloat16) over fp32 weights"] if "bf16" in args.dtype else []),
        *([f"fp32 = float32, matmul TF32 {tf32}" if device.type == "cuda" else "fp32 = float32"] if "fp32" in args.dtype else []),
        f"median of {args.iters} iters after {args.warmup} warm-up",
        "peak GiB = max_memory_allocated incl. weights and input" if device.type == "cuda" else "peak memory not measured on CPU",
        f"merge % from a separate hooked eager pass of {args.profile_iters} iters",
        f"fast vid-TLDR saliency: {resolve_saliency_backend(args.saliency_backend, device)}",
    ]
    if args.compile:
        parts.append("fast rows torch.compile'd")
    return "; ".join(parts)


def title(args: argparse.Namespace) -> str:
    return f"{args.model} vision encoder, r = [{args.r}]"


def print_table(results: list[RowResult], args: argparse.Namespace, device: torch.device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title(args), caption=caption(args, device))
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in LEFT else "right")
    group = None
    for r in results:
        if group is not None and group != (r.dtype, r.frames, r.batch):
            table.add_section()
        group = (r.dtype, r.frames, r.batch)
        table.add_row(*row_cells(r))
    Console(width=200).print(table)


def markdown_table(results: list[RowResult]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in LEFT else "---:" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in results]
    return lines


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores available, torch threads: {torch.get_num_threads()}"


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def section_body(report: Report, args: argparse.Namespace, device: torch.device, argv: Sequence[str]) -> str:
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    command = " ".join(["python benchmarks/encoder_throughput.py", *(shlex.quote(a) for a in argv)])
    lines = [
        (f"Measured {_dt.date.today().isoformat()} on {device_name(device)} (Python {platform.python_version()}, "
         f"torch {torch.__version__}{cuda}, Lightning {_pkg_version('lightning')})."),
        "",
        f"Command: `{command}`",
        "",
        (f"{args.model} vision encoder only (`create_model`, seeded random weights; settings applied with "
         f"`apply_merge`), r = [{args.r}] (one entry per block). "
         "\"reference\": `attention=\"explicit\"` (N x N map materialised, official vid-TLDR semantics); "
         "\"fast\": `attention=\"fused\"` (SDPA; vid-TLDR saliency recomputed exactly from q / k). "
         "GFLOPs per video in torch's unit (2 per multiply-add, merge step included, counted on the meta device). "
         f"{caption(args, device)}. \"merge %\" covers the `LayerMerge` modules only (matching, merge, and in the "
         "fast path the saliency pass); the reference path's extra unbiased softmax is inside attention. "
         "\"vs no merge\": videos/s over the same path without merging; "
         "\"vs ref vid-TLDR\": fast (or flex) vid-TLDR over reference vid-TLDR."),
        "",
        *markdown_table(report.results),
    ]
    if report.checks:
        header = ("fp32 exactness check (`--check`: reference vs fast vid-TLDR, same weights and input, TF32 off; "
                  "weights re-drawn as randn / sqrt(fan_in), qkv x 2, so that attention is not near-uniform; "
                  "\"pooled\" = the mean over the output tokens):")
        lines += ["", header, ""]
        lines += [f"- {c.describe()}" for c in report.checks]
    return "\n".join(lines)


def write_section(md_path: Path, body: str, heading: str = SECTION) -> None:
    """Replace the section that starts with the line ``heading`` (up to the next ``#``/``##`` heading) with
    heading + body; append it when missing. Every other byte of the file is kept."""
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    block = f"{heading}\n\n{body.rstrip()}\n"
    match = re.search(rf"^{re.escape(heading)}[ \t]*$", text, flags=re.MULTILINE)
    if match is None:
        text = (text if text.endswith("\n") else text + "\n") + "\n" + block
    else:
        nxt = re.search(r"^#{1,2} ", text[match.end():], flags=re.MULTILINE)
        tail = "" if nxt is None else "\n" + text[match.end() + nxt.start():]
        text = text[: match.start()] + block + tail
    md_path.write_text(text)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="umt_b16", choices=list_models(),
                        help="a registered model (vidtldr_pl.backbones.list_models()); its first mergeable encoder is timed")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROW_SPECS),
                        help="flex-none / flex-vidtldr (FlexAttention, compiled on CUDA) and fast-<method> of the "
                             "other registered methods (fast-vidtldr_repshift, ...) are extra rows")
    parser.add_argument("--r", default=MSRVTT_R, help="per-block r list (MSRVTT schedule by default)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per row (include compilation)")
    parser.add_argument("--profile-iters", type=int, default=3, help="iterations of the hooked merge-share pass (0: skip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder for the fast rows")
    parser.add_argument("--check", action="store_true", help="fp32 exactness check: reference vs fast vid-TLDR")
    parser.add_argument("--check-batch", type=int, default=2)
    parser.add_argument("--saliency-backend", default="auto", choices=SALIENCY_BACKENDS,
                        help="fast vid-TLDR saliency from q / k: auto (Triton on CUDA, else chunked), chunked, triton")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 avoids thrashing on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="replace the '## Encoder throughput' section there")
    parser.add_argument("--section", default=SECTION,
                        help="the '## ' heading of the section that --write replaces or appends (default: %(default)r)")
    args = parser.parse_args(argv)
    if not args.section.startswith("## "):
        parser.error(f"--section must be a '## ' heading, got {args.section!r}")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def run_rows(args: argparse.Namespace, device: torch.device) -> list[RowResult]:
    encoder = build_encoder(args.model, device, args.frames[0], args.seed)
    specs = [ROW_SPECS[k] for k in args.rows]
    flops = {(s.key, f): flop_report(encoder, s, f, args.r) for s in specs for f in args.frames}
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    results = []
    for dtype in args.dtype:
        for frames in args.frames:
            for batch in args.batch:
                video = torch.randn(video_shape(encoder, batch, frames), generator=gen).to(device)
                for spec in specs:
                    configure(encoder, spec, args.r, args.saliency_backend)
                    results.append(measure_row(encoder, spec, video, dtype, args, flops[(spec.key, frames)]))
                del video
    add_ratios(results)
    return results


def main(argv: Sequence[str] | None = None) -> Report:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # events and peak-memory stats follow the current device
    report = Report(results=run_rows(args, device))
    print_table(report.results, args, device)
    if args.check:
        encoder = non_degenerate_weights(build_encoder(args.model, device, args.frames[0], args.seed), args.seed)
        report.checks = [check_exactness(encoder, f, args.check_batch, args.r, args.seed, args.saliency_backend)
                         for f in args.frames]
        print("fp32 exactness check, reference vs fast vid-TLDR (same non-degenerate weights and input, TF32 off):")
        for c in report.checks:
            print(f"  {c.describe()}")
    if args.write is not None:
        write_section(args.write, section_body(report, args, device, argv), heading=args.section)
        print(f"updated {args.write}")
    return report


if __name__ == "__main__":
    main()
