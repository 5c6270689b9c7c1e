"""Everything that needs a GPU, in one command, one table, at most ~8 minutes on one H100 / H200.

Parts (each catches its own failure and records the error in the JSON; a global time guard skips what no longer
fits in ``--budget``):

* (a) encoder throughput and peak memory (``benchmarks/encoder_throughput.py``'s measurement): explicit vs fused vs
  flex attention; no merging / ToMe / vid-TLDR / vid-TLDR RepShift (``FAST_METHODS``); UMT-B at 8 and 12 frames, batch 1 and 32, bf16
  and fp32; the merge step's share of the encoder time; VideoMAE-B rows;
* (b) the saliency kernels: Triton (compiled) against the chunked PyTorch path and a float64 reference, the official
  block-stack fixtures through the Triton path, the fp32 reference-vs-fast encoder check, and
  ``tests/triton_saliency_script.py`` (its JSON);
* (c) Lightning DeepSpeed ZeRO-2 and ZeRO-3 fits of the demo model with vid-TLDR for a few steps (``train.py`` with
  configs/demo_umt.yaml + configs/strategies/deepspeed_zero{2,3}.yaml), the export of each sharded checkpoint, and
  ``evaluate.py`` on the exported weights;
* (d) a UMT-B retrieval training step (VTC + VTM, AdamW) with and without merging: videos/s and peak memory;
* (e) ``torch.compile`` of the encoder with and without vid-TLDR: compile time, speed against eager, graphs.
* (f) wall clock (``benchmarks/wall_clock.py``): videos/s per method over batch 1 / 2 / 8 / 32, bf16 / fp32,
  fused / explicit attention, the merge step's own ms and share, speed-up over no merging.

The verdicts against the targets of "Fast merging" (UMT-B/16, 12 frames, bf16, batch 32, fused path: vid-TLDR
>= 1.6x no merging and >= 6x explicit vid-TLDR, peak <= 3.5 GiB, merge step <= 10 % of the encoder time; batch 1:
merged not slower than unmerged) close the table.

Usage::

    python benchmarks/gpu_suite.py --json gpu_suite.json --write BENCHMARKS.md   # on the GPU machine
    python benchmarks/gpu_suite.py --render gpu_suite.json --write BENCHMARKS.md # the section again, from the JSON
    python benchmarks/gpu_suite.py --dry-run                                     # every part at tiny sizes on CPU

docs/gpu_suite.md gives the device-side install lines (wheels from tools/gpu_wheels.sh).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import encoder_throughput as et  # noqa: E402  (benchmarks/ is not a package)
import padding_packing as pp  # noqa: E402
import wall_clock as wc  # noqa: E402

from vidtldr_pl.merging import METHODS  # noqa: E402

SECTION = "## GPU suite"
MSRVTT_R = "600,200,100"
VIDEOMAE_R = "400,133,67"  # MSRVTT's token fractions on VideoMAE's 1568 tokens (no official VideoMAE schedule)
DEMO_R = [72, 36, 18]  # configs/demo_umt.yaml's vid-TLDR schedule (288 tokens)
# Merge methods of the fast-path rows (a), the VideoMAE rows (a) and the training step (d). A new method is one
# entry once vidtldr_pl.merging.METHODS has it; vidtldr_repshift is vid-TLDR with the Representation-Shift saliency.
FAST_METHODS = ["tome", "vidtldr", "vidtldr_repshift"]
PARTS = {"a": "encoder throughput", "b": "saliency kernels", "c": "DeepSpeed fits", "d": "training step",
         "e": "torch.compile", "f": "wall clock", "g": "padding / packing"}
VERSION_PACKAGES = ("lightning", "triton", "deepspeed", "jsonargparse", "datasets", "av", "tokenizers", "timm",
                    "transformers")


@dataclass
class SuiteConfig:
    """Sizes of one suite run: ``gpu_config()`` (the real one) or ``dry_config()`` (tiny, CPU)."""

    model: str = "umt_b16"
    frames: tuple[int, ...] = (12, 8)  # the first is the target setting's
    batches: tuple[int, ...] = (32, 1)  # the first is the target setting's
    dtypes: tuple[str, ...] = ("bf16", "fp32")  # the first is the target setting's
    r: str = MSRVTT_R
    videomae: str | None = "videomae_b16"
    videomae_frames: int = 16
    videomae_r: str = VIDEOMAE_R
    iters: int = 5
    warmup: int = 2
    profile_iters: int = 2
    check_batch: int = 2
    kernel_cases: tuple[tuple[int, int, int, int, int, str], ...] = (  # (B, H, N, M, d, dtype); the last is timed
        (2, 3, 70, 70, 16, "fp32"), (1, 2, 33, 50, 24, "fp32"), (2, 4, 130, 130, 64, "bf16"),
        (1, 3, 97, 97, 32, "fp16"), (2, 12, 2352, 2352, 64, "fp32"), (16, 12, 2352, 2352, 64, "bf16"))
    train_model: str = "umt_b16"
    train_frames: int = 12
    train_batch: int = 16
    train_dtype: str = "bf16"
    train_steps: int = 5
    train_warmup: int = 2
    compile_batch: int = 32
    compile_backend: str = "inductor"
    compile_iters: int = 10
    ds_num_train: int = 64
    ds_num_val: int = 32
    ds_num_test: int = 100
    ds_batch: int = 16
    # seconds: (share of the budget a part may take, least time it needs to start)
    part_seconds: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "a": (170, 60), "b": (40, 15), "c": (180, 60), "d": (30, 15), "e": (90, 40), "f": (120, 30), "g": (60, 20)})

    @property
    def target(self) -> tuple[int, int, str]:
        """(frames, batch, dtype) of the "Fast merging" targets."""
        return self.frames[0], self.batches[0], self.dtypes[0]


def gpu_config() -> SuiteConfig:
    return SuiteConfig()


def dry_config() -> SuiteConfig:
    """Every part at tiny sizes on CPU: umt_tiny (4 frames) and videomae_tiny (8 frames), 64 tokens each; one
    iteration per row."""
    return SuiteConfig(
        model="umt_tiny", frames=(4,), batches=(2, 1), dtypes=("fp32", "bf16"), r="16,8,4",
        videomae="videomae_tiny", videomae_frames=8, videomae_r="16,8,4", iters=1, warmup=0, profile_iters=1,
        kernel_cases=((2, 3, 70, 70, 16, "fp32"), (1, 2, 33, 50, 24, "fp32")),
        train_model="umt_tiny", train_frames=4, train_batch=2, train_dtype="fp32", train_steps=1, train_warmup=0,
        compile_batch=2, compile_backend="eager", compile_iters=1,
        part_seconds={k: (120, 0) for k in PARTS},
    )


# ----------------------------------------------------------------------------------------------- running parts


@dataclass
class Context:
    """What a part sees: the sizes, the device, its own deadline (time.monotonic()) and a work folder."""

    cfg: SuiteConfig
    device: torch.device
    dry_run: bool
    workdir: Path
    fixtures: Path
    deadline: float = math.inf
    seed: int = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0


def line(part: str, item: str, setting: str = "", videos_per_s: float | None = None, ms: float | None = None,
         peak_gib: float | None = None, merge_pct: float | None = None, ratio: str = "", result: str = "") -> dict:
    """One row of the suite's table."""
    return {"part": part, "item": item, "setting": setting, "videos_per_s": videos_per_s, "ms": ms,
            "peak_gib": peak_gib, "merge_pct": merge_pct, "ratio": ratio, "result": result}


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_parts(ctx: Context, selected: Sequence[str], budget_s: float) -> dict[str, dict]:
    """Run the selected parts in order a..e, each in try / except, under the global time guard: a part starts only
    when at least its minimum time is left, and its deadline keeps the minimum time of the parts after it."""
    start = time.monotonic()
    out: dict[str, dict] = {}
    keys = [k for k in PARTS if k in selected]
    for i, key in enumerate(keys):
        share, least = ctx.cfg.part_seconds[key]
        reserve = sum(ctx.cfg.part_seconds[k][1] for k in keys[i + 1:])
        left = budget_s - (time.monotonic() - start)
        if left <= 0 or left < least:
            out[key] = {"status": "skipped", "reason": f"time guard: {max(left, 0):.0f} s of the {budget_s:.0f} s "
                        f"budget left, the part needs at least {least:.0f} s", "seconds": 0.0, "lines": []}
            continue
        ctx.deadline = time.monotonic() + min(share, max(left - reserve, least))
        t0 = time.monotonic()
        print(f"[gpu_suite] part ({key}) {PARTS[key]} ...", flush=True)
        try:
            result = PART_FUNCTIONS[key](ctx)
            result.setdefault("status", "ok")
        except Exception as err:  # noqa: BLE001  (a part's failure is a result, not the end of the run)
            result = {"status": "error", "error": _short(err), "traceback": traceback.format_exc()[-4000:],
                      "lines": [line(key, PARTS[key], result=f"ERROR {_short(err)}")]}
        finally:
            _free(ctx.device)
        result["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[gpu_suite] part ({key}) {result['status']} in {result['seconds']:.0f} s", flush=True)
        out[key] = result
    for key in PARTS:
        if key not in selected:
            out[key] = {"status": "skipped", "reason": "not selected (--parts)", "seconds": 0.0, "lines": []}
    return {k: out[k] for k in PARTS}


# ----------------------------------------------------------------------------------------------- (a) encoder


def available_methods() -> tuple[list[str], list[str]]:
    """(FAST_METHODS that vidtldr_pl.merging.METHODS has, those it has not)."""
    return [m for m in FAST_METHODS if m in METHODS], [m for m in FAST_METHODS if m not in METHODS]


def umt_specs(methods: Sequence[str]) -> list[et.RowSpec]:
    return [et.row_spec("explicit", "none"), et.row_spec("explicit", "vidtldr"), et.row_spec("fused", "none"),
            *(et.row_spec("fused", m) for m in methods), et.row_spec("flex", "none"), et.row_spec("flex", "vidtldr")]


def encoder_cells(cfg: SuiteConfig, methods: Sequence[str]) -> list[tuple[str, int, int, str, str, list[et.RowSpec]]]:
    """(model, frames, batch, dtype, r, rows) in the order they run: the targets' setting first, then the other
    bf16 cells, the VideoMAE rows, and fp32 last (the time guard cuts from the end)."""
    specs = umt_specs(methods)
    cells = []
    for dtype in cfg.dtypes[:1]:
        cells += [(cfg.model, f, b, dtype, cfg.r, specs) for f in cfg.frames for b in cfg.batches]
    if cfg.videomae:
        vm = [et.row_spec("fused", "none"), *(et.row_spec("fused", m) for m in methods)]
        cells += [(cfg.videomae, cfg.videomae_frames, b, cfg.dtypes[0], cfg.videomae_r, vm) for b in cfg.batches]
    for dtype in cfg.dtypes[1:]:
        cells += [(cfg.model, f, b, dtype, cfg.r, specs) for f in cfg.frames for b in cfg.batches]
    return cells


def _row_dict(model: str, r: str, row: et.RowResult) -> dict:
    data = dataclasses.asdict(row)
    spec = data.pop("spec")
    return {"model": model, "r": r, "key": spec["key"], "attention": spec["attention"], "method": spec["method"],
            "label": row.spec.label, **data}


def measure_cells(ctx: Context, methods: Sequence[str]
                  ) -> tuple[dict[str, list[et.RowResult]], dict[str, str], list[str]]:
    """Part (a)'s rows, cell by cell until the part's deadline: ({model: rows}, {model: r}, cells skipped)."""
    cfg, device = ctx.cfg, ctx.device
    margs = SimpleNamespace(iters=cfg.iters, warmup=cfg.warmup, profile_iters=cfg.profile_iters, compile=False)
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    results: dict[str, list[et.RowResult]] = {}
    schedules: dict[str, str] = {}
    flops: dict[tuple, Any] = {}
    skipped: list[str] = []
    current: tuple[str, Any] | None = None
    for model, frames, batch, dtype, r, specs in encoder_cells(cfg, methods):
        if ctx.expired():
            skipped.append(f"{model} {frames}f b{batch} {dtype}")
            continue
        if current is None or current[0] != model:  # one encoder in memory at a time (peak memory stays honest)
            current = None
            _free(device)
            current = (model, et.build_encoder(model, device, frames, ctx.seed))
        encoder = current[1]
        schedules[model] = r
        for spec in specs:
            if (model, spec.key, frames) not in flops:
                flops[(model, spec.key, frames)] = et.flop_report(encoder, spec, frames, r)
        video = torch.randn(et.video_shape(encoder, batch, frames), generator=gen).to(device)
        for spec in specs:
            report = flops[(model, spec.key, frames)]
            try:
                et.configure(encoder, spec, r)
                row = et.measure_row(encoder, spec, video, dtype, margs, report)
            except Exception as err:  # noqa: BLE001  (e.g. a kernel that does not compile: the next row runs)
                row = et.RowResult(spec, frames, batch, dtype, report.gflops, list(report.tokens_per_layer),
                                   error=_short(err))
            results.setdefault(model, []).append(row)
        del video
    return results, schedules, skipped


def part_encoder(ctx: Context) -> dict:
    cfg = ctx.cfg
    methods, missing = available_methods()
    with warnings.catch_warnings():
        if ctx.device.type != "cuda":  # FlexAttention runs eagerly off CUDA (a slow check of the same arithmetic)
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        results, schedules, skipped = measure_cells(ctx, methods)
    rows = []
    for model, model_rows in results.items():
        et.add_ratios(model_rows)
        rows += [_row_dict(model, schedules[model], r) for r in model_rows]
    rows.sort(key=lambda d: (d["model"] != cfg.model, d["model"], list(cfg.dtypes).index(d["dtype"]),
                             -d["frames"], -d["batch"]))
    lines = [line("a", f"{d['model']} {d['frames']}f b{d['batch']} {d['dtype']}", f"{d['attention']} / {d['label']}",
                  d["videos_per_s"], d["ms_per_batch"], d["peak_gib"],
                  None if d["merge_share"] is None else 100 * d["merge_share"], _ratio_text(d),
                  d["error"] or f"{et._gflops(d['gflops'])} GFLOPs") for d in rows]
    lines += [line("a", cell, result="skipped: time guard") for cell in skipped]
    failed = any(d["error"] for d in rows)
    return {"status": "partial" if skipped or failed else "ok", "rows": rows, "skipped": skipped,
            "methods": methods, "methods_missing": missing, "schedules": schedules, "lines": lines,
            "note": "median of {} iters after {} warm-up; merge % from a hooked pass of {} iters".format(
                cfg.iters, cfg.warmup, cfg.profile_iters)}


def _ratio_text(d: dict) -> str:
    parts = []
    if d.get("vs_no_merge") is not None:
        parts.append(f"{d['vs_no_merge']:.2f}x")
    if d.get("vs_ref_vidtldr") is not None:
        parts.append(f"{d['vs_ref_vidtldr']:.2f}x vs explicit")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------- (b) saliency

DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SALIENCY_TOL = 1e-5  # raw saliency relative error (issue "Fast merging")
BLOCK_TOL = {"x": 4e-5, "size": 1e-5, "source": 1e-5}  # tests/test_official_fixtures.py's block-stack tolerances
BLOCK_CASES = ("block_B_b2_t196_c96_h12", "block_C_b2_t197_c64_h4_frac", "block_D_b3_t100_c32_h4_cap")


def saliency_float64(q: Tensor, k: Tensor, chunk: int = 256) -> Tensor:
    """q: (B, H, N, d) scaled queries, k: (B, H, M, d) -> (B, N, 1) float64 sum_j a log a of the head-mean
    attention (the reference of the float32 paths)."""
    out = []
    for start in range(0, q.shape[-2], chunk):
        p = (q[..., start:start + chunk, :].double() @ k.double().transpose(-1, -2)).softmax(-1).mean(dim=1)
        out.append(torch.special.xlogy(p, p).sum(dim=-1, keepdim=True))
    return torch.cat(out, dim=1)


def _rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-12)).max().item()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def kernel_cases(ctx: Context, backend: str) -> tuple[list[dict], list[dict]]:
    """The q / k saliency of ``backend`` against the chunked path and a float64 reference; the last case timed."""
    from vidtldr_pl.merging import negative_entropy_from_qk

    cases, lines = [], []
    gen = torch.Generator().manual_seed(ctx.seed)
    for i, (b, h, n, m, d, dt) in enumerate(ctx.cfg.kernel_cases):
        if ctx.expired():
            lines.append(line("b", f"q/k saliency {b}x{h}x{n}x{m}x{d} {dt}", result="skipped: time guard"))
            continue
        q = (torch.randn(b, h, n, d, generator=gen) * d ** -0.5 * 2).to(ctx.device, DTYPE_NAMES[dt])
        k = torch.randn(b, h, m, d, generator=gen).to(ctx.device, DTYPE_NAMES[dt])
        with torch.inference_mode():
            got = negative_entropy_from_qk(q, k, backend=backend)
            chunked = negative_entropy_from_qk(q, k, chunk_size=97, backend="chunked")
            ref = saliency_float64(q, k)
        case = {"shape": [b, h, n, m, d], "dtype": dt, "backend": backend,
                "rel_err_vs_chunked": _rel_err(got, chunked), "rel_err_vs_float64": _rel_err(got, ref),
                "chunked_rel_err_vs_float64": _rel_err(chunked, ref)}
        case["pass"] = case["rel_err_vs_float64"] <= SALIENCY_TOL and case["rel_err_vs_chunked"] <= SALIENCY_TOL
        ms = None
        if i == len(ctx.cfg.kernel_cases) - 1:  # the UMT-B-sized case: time both paths
            with torch.inference_mode():
                for name in (backend, "chunked"):
                    times = et.time_encoder(lambda _x, name=name: negative_entropy_from_qk(q, k, backend=name), q,
                                            ctx.cfg.iters, ctx.cfg.warmup)
                    case[f"ms_{name}"] = statistics.median(times) * 1e3
            ms = case[f"ms_{backend}"]
        cases.append(case)
        lines.append(line("b", f"q/k saliency {b}x{h}x{n}x{m}x{d} {dt}", f"{backend} vs chunked / float64", ms=ms,
                          ratio=f"{case['rel_err_vs_chunked']:.1e} / {case['rel_err_vs_float64']:.1e}",
                          result=f"{_verdict(case['pass'])} (rel err <= {SALIENCY_TOL:g})"))
        del q, k
    return cases, lines


def block_fixtures(ctx: Context, backend: str) -> tuple[dict, list[dict]]:
    """The official block-stack fixtures (fused attention, vid-TLDR with ``backend`` saliency, fp32, TF32 off):
    max abs errors of x, sizes and sources against the golden tensors after every block."""
    from safetensors import safe_open

    from vidtldr_pl.backbones.layers import Block
    from vidtldr_pl.merging import LayerMerge, MergeState, VidTLDR

    out, lines = {}, []
    for case in BLOCK_CASES:
        path = ctx.fixtures / f"{case}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"official fixture not found: {path} (--fixtures names the folder)")
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        blocks = []
        for i, r in enumerate(meta["r"]):
            block = Block(meta["C"], meta["H"], attention="fused")
            prefix = f"weights.{i}."
            block.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
            block.merge = LayerMerge(VidTLDR(saliency_backend=backend), r) if r else None
            blocks.append(block.to(ctx.device).eval())
        state, x = MergeState(trace_source=True), tensors["x_in"].to(ctx.device)
        errs = {"x": 0.0, "size": 0.0, "source": 0.0, "tokens_ok": True}
        with torch.inference_mode(), et._no_tf32():
            for layer, block in enumerate(blocks):
                x = block(x, state)
                errs["tokens_ok"] &= x.shape[1] == meta["layers"][layer]["T_out"]
                for key, ours in (("x", x), ("size", state.size), ("source", state.source)):
                    gold = tensors[f"{'x_out' if key == 'x' else key}_l{layer}"]
                    err = ((ours.cpu().double() - gold.double()).abs().max().item()
                           if ours is not None and ours.shape == gold.shape else math.inf)
                    errs[key] = max(errs[key], err)
        errs["pass"] = errs["tokens_ok"] and all(errs[k] < tol for k, tol in BLOCK_TOL.items())
        out[case] = errs
        lines.append(line("b", f"fixture {case}", f"fused + {backend} saliency vs official",
                          ratio=f"x {errs['x']:.1e}, size {errs['size']:.1e}, source {errs['source']:.1e}",
                          result=f"{_verdict(errs['pass'])} (x < 4e-5, size / source < 1e-5)"))
    return out, lines


def encoder_check(ctx: Context, backend: str) -> tuple[dict, list[dict]]:
    """fp32, TF32 off: explicit (official) vs fused vid-TLDR on the target model and frames (non-degenerate
    weights): the must-show of "Fast merging" (saliency rel err <= 1e-5, same tokens merged, outputs within 1e-4)."""
    cfg = ctx.cfg
    frames = cfg.target[0]
    encoder = et.non_degenerate_weights(et.build_encoder(cfg.model, ctx.device, frames, ctx.seed), ctx.seed)
    check = et.check_exactness(encoder, frames, cfg.check_batch, cfg.r, ctx.seed, backend)
    data = dataclasses.asdict(check)
    data["pass"] = (check.saliency_rel_err <= SALIENCY_TOL and check.same_sources and check.same_tokens
                    and check.max_abs_diff <= 1e-4)
    result = line("b", f"{cfg.model} {frames}f b{cfg.check_batch} fp32", f"explicit vs fused, {check.saliency_backend}",
                  ratio=f"out {check.max_abs_diff:.1e}, saliency {check.saliency_rel_err:.1e}",
                  result=f"{_verdict(data['pass'])} (same tokens merged: {'yes' if check.same_sources else 'NO'})")
    return data, [result]


def saliency_script(ctx: Context) -> dict:
    """tests/triton_saliency_script.py on CUDA (the documented check of the compiled kernels): its JSON."""
    script = ROOT / "tests" / "triton_saliency_script.py"
    command = [sys.executable, str(script), "--device", "cuda", "--fixtures", str(ctx.fixtures)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, ctx.left()))
    if proc.returncode != 0:
        return {"returncode": proc.returncode, "error": proc.stderr[-2000:]}
    return {"returncode": 0, "result": json.loads(proc.stdout.strip().splitlines()[-1])}


def part_saliency(ctx: Context) -> dict:
    from vidtldr_pl.merging.saliency import resolve_saliency_backend

    backend = resolve_saliency_backend("auto", ctx.device)
    out: dict[str, Any] = {"backend": backend}
    out["kernel_cases"], lines = kernel_cases(ctx, backend)
    out["fixtures"], more = block_fixtures(ctx, backend)
    lines += more
    out["encoder_check"], more = encoder_check(ctx, backend)
    lines += more
    if backend != "triton":
        out["triton"] = (f"not run: the compiled Triton kernels need CUDA (saliency backend here: {backend}); "
                         "tests/test_saliency_triton.py runs them in Triton's CPU interpreter")
        lines.append(line("b", "Triton kernels", result=out["triton"]))
    else:
        out["script"] = saliency_script(ctx)
        ok = out["script"]["returncode"] == 0
        lines.append(line("b", "tests/triton_saliency_script.py --device cuda", "JSON in gpu_suite.json",
                          result="ran" if ok else f"ERROR (exit {out['script']['returncode']})"))
    passed = [c["pass"] for c in out["kernel_cases"]] + [e["pass"] for e in out["fixtures"].values()]
    passed.append(out["encoder_check"]["pass"])
    out["pass"] = all(passed)
    out["lines"] = lines
    return out


# ----------------------------------------------------------------------------------------------- (c) DeepSpeed


def deepspeed_commands(ctx: Context, stage: int) -> dict[str, list[str]]:
    """The fit / export / evaluate command lines of one ZeRO stage (run from the repository root)."""
    cfg, work = ctx.cfg, ctx.workdir
    run = work / f"zero{stage}"
    data = [f"--data.init_args.cache_dir={work / 'synthetic'}", "--data.init_args.num_workers=2"]
    fit = [sys.executable, "train.py", "--config", "configs/demo_umt.yaml",
           "--config", f"configs/strategies/deepspeed_zero{stage}.yaml", "--config", str(work / "vidtldr_train.yaml"),
           "--trainer.devices=1", "--trainer.max_epochs=1", f"--trainer.max_steps={cfg.ds_num_train // cfg.ds_batch}",
           "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1",
           f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
           f"--data.init_args.num_train={cfg.ds_num_train}", f"--data.init_args.num_val={cfg.ds_num_val}",
           f"--data.init_args.batch_size={cfg.ds_batch}", f"--data.init_args.eval_batch_size={cfg.ds_num_val}", *data]
    weights = run / "weights.safetensors"
    export = [sys.executable, "-m", "vidtldr_pl.export", "<last.ckpt>", str(weights), "--preset", "umt_demo"]
    evaluate = [sys.executable, "evaluate.py", "--config", "configs/demo_umt.yaml",
                f"--model.init_args.checkpoint={weights}", "--trainer.accelerator=gpu", "--trainer.devices=1",
                "--trainer.precision=bf16-mixed", f"--trainer.default_root_dir={run / 'eval'}",
                f"--trainer.logger.init_args.save_dir={run / 'eval'}", f"--results={run / 'results.json'}",
                f"--data.init_args.num_test={cfg.ds_num_test}", "--data.init_args.eval_batch_size=50", *data]
    return {"fit": fit, "export": export, "evaluate": evaluate}


def write_train_overlay(path: Path) -> Path:
    """The config added to the fit: vid-TLDR active while training (the demo's schedule), the LR monitor kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# added by benchmarks/gpu_suite.py: vid-TLDR active during the DeepSpeed fits\n"
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
        "      init_args: {logging_interval: step}\n"
        "    - class_path: vidtldr_pl.callbacks.TokenMerging\n"
        f"      init_args: {{method: vidtldr, r: {DEMO_R}, attention: fused}}\n")
    return path


def _run(command: list[str], log: Path, timeout: float) -> dict:
    """Run command from the repository root; output to log; the tail kept on failure."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code = "timeout"
        text = f"{err.stdout or ''}{err.stderr or ''}"
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    out = {"command": shlex.join(command), "returncode": code, "seconds": round(time.monotonic() - t0, 1),
           "log": str(log)}
    if code != 0:
        out["tail"] = text[-3000:]
    return out


def _last_loss(run: Path) -> float | None:
    """The last logged train/loss of a fit (CSVLogger's metrics.csv)."""
    for metrics in sorted(run.rglob("metrics.csv"), reverse=True):
        with metrics.open() as f:
            values = [row.get("train/loss") for row in csv.DictReader(f)]
        values = [float(v) for v in values if v not in (None, "")]
        if values:
            return values[-1]
    return None


def config_check(ctx: Context) -> dict:
    """CPU stand-in for the fits: train.py parses the ZeRO-2 fit command (--print_config) and the parsed config has
    the DeepSpeed strategy and the TokenMerging callback."""
    command = [*deepspeed_commands(ctx, 2)["fit"], "--print_config"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(60.0, ctx.left()))
    text = proc.stdout
    ok = proc.returncode == 0 and "strategy: deepspeed_stage_2" in text and "vidtldr_pl.callbacks.TokenMerging" in text
    out = {"command": shlex.join(command), "returncode": proc.returncode, "pass": ok}
    if not ok:
        out["tail"] = (proc.stdout + proc.stderr)[-3000:]
    return out


def part_deepspeed(ctx: Context) -> dict:
    write_train_overlay(ctx.workdir / "vidtldr_train.yaml")
    commands = {f"zero{s}": deepspeed_commands(ctx, s) for s in (2, 3)}
    if ctx.device.type != "cuda":
        reason = ("skipped: Lightning's DeepSpeed strategy needs CUDA (it refuses the CPU accelerator); "
                  "the fit command was parsed instead")
        check = config_check(ctx)
        return {"status": "skipped", "reason": reason, "commands": {k: {n: shlex.join(c) for n, c in v.items()}
                                                                     for k, v in commands.items()},
                "config_check": check,
                "lines": [line("c", "ZeRO-2 / ZeRO-3 fits, export, evaluate", result=reason),
                          line("c", "train.py --print_config (ZeRO-2 fit command)",
                               result=_verdict(check["pass"]))]}
    out: dict[str, Any] = {"stages": {}}
    lines = []
    for stage in (2, 3):
        name, cmds = f"zero{stage}", commands[f"zero{stage}"]
        run = ctx.workdir / name
        steps: dict[str, Any] = {}
        out["stages"][name] = steps
        if ctx.expired():
            lines.append(line("c", f"ZeRO-{stage}", result="skipped: time guard"))
            continue
        fit = steps["fit"] = _run(cmds["fit"], run / "fit.log", ctx.left())
        fit["train_loss"] = _last_loss(run)
        ckpts = sorted(run.rglob("last.ckpt"))
        fit["checkpoint"] = str(ckpts[0]) if ckpts else None
        ok = fit["returncode"] == 0 and ckpts
        loss = "-" if fit["train_loss"] is None else f"{fit['train_loss']:.3f}"
        lines.append(line("c", f"ZeRO-{stage} fit", f"umt_demo, vid-TLDR r={DEMO_R}, "
                          f"{ctx.cfg.ds_num_train // ctx.cfg.ds_batch} steps", ms=fit["seconds"] * 1e3,
                          result=f"{'ok' if ok else 'FAILED'} (last train loss {loss})"))
        if not ok or ctx.expired():
            continue
        export_cmd = [str(ckpts[0]) if c == "<last.ckpt>" else c for c in cmds["export"]]
        exp = steps["export"] = _run(export_cmd, run / "export.log", ctx.left())
        lines.append(line("c", f"ZeRO-{stage} export", "sharded folder -> safetensors", ms=exp["seconds"] * 1e3,
                          result="ok" if exp["returncode"] == 0 else "FAILED"))
        if exp["returncode"] != 0 or ctx.expired():
            continue
        ev = steps["evaluate"] = _run(cmds["evaluate"], run / "evaluate.log", ctx.left())
        r1 = {}
        if ev["returncode"] == 0 and (run / "results.json").is_file():
            runs = json.loads((run / "results.json").read_text())["runs"]
            r1 = {row["name"]: row.get("itm/img_r1") for row in runs}
        ev["t2v_r1"] = r1
        summary = ", ".join(f"{k} {v:.1f}" for k, v in r1.items() if isinstance(v, (int, float)))
        lines.append(line("c", f"ZeRO-{stage} evaluate.py", f"exported weights, {ctx.cfg.ds_num_test} test clips",
                          ms=ev["seconds"] * 1e3,
                          result=f"t2v R@1: {summary}" if ev["returncode"] == 0 and r1 else "FAILED"))
    out["lines"] = lines
    done = all(s.get("evaluate", {}).get("returncode") == 0 for s in out["stages"].values())
    out["status"] = "ok" if done else "error"
    return out


# ----------------------------------------------------------------------------------------------- (d) training


def part_training(ctx: Context) -> dict:
    """One UMT retrieval training step (VTC + VTM with hard negatives, backward, AdamW), as RetrievalTask trains."""
    from vidtldr_pl.backbones import create_model
    from vidtldr_pl.merging import MergeSetting, apply_merge
    from vidtldr_pl.tasks.losses import sample_hard_negatives, vtc_loss, vtm_loss

    cfg, device = ctx.cfg, ctx.device
    methods, _ = available_methods()
    torch.manual_seed(ctx.seed)
    with torch.device(device):
        model = create_model(cfg.train_model, num_frames=cfg.train_frames)
    model.train()
    vision, text = model.cfg.vision, model.cfg.text
    b = cfg.train_batch
    gen = torch.Generator().manual_seed(ctx.seed)
    video = torch.randn(b, cfg.train_frames, 3, vision.img_size, vision.img_size, generator=gen).to(device)
    ids = torch.randint(1, text.vocab_size, (b, 24), generator=gen).to(device)
    mask = torch.ones_like(ids)
    idx = torch.arange(b, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step_gen = torch.Generator(device=device).manual_seed(ctx.seed)
    losses: list[Tensor] = []

    def step(_: Tensor) -> None:
        with et.precision(device, cfg.train_dtype):
            tokens, pooled = model.encode_vision(video)
            text_hidden = model.encode_text(ids, mask)
            vf, tf = model.vision_embed(pooled), model.text_embed(text_hidden)
            loss = vtc_loss(vf, tf, idx, model.temp)
            v_for_t, t_for_v = sample_hard_negatives(vf, tf, idx, model.temp, step_gen)
            logits = model.itm_logits(torch.cat([text_hidden, text_hidden, text_hidden[t_for_v]]),
                                      torch.cat([mask, mask, mask[t_for_v]]),
                                      torch.cat([tokens, tokens[v_for_t], tokens]))
            loss = loss + vtm_loss(logits, b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    rows, lines = [], []
    for method in ["none", *methods]:
        if ctx.expired():
            lines.append(line("d", f"{cfg.train_model} train step", method, result="skipped: time guard"))
            continue
        r = None if method == "none" else cfg.r
        counts = apply_merge(model, MergeSetting(method=method, r=r, attention="fused"))
        et._peak_reset(device)
        times = et.time_encoder(step, video, cfg.train_steps, cfg.train_warmup)
        loss = float(losses[-1])
        row = {"method": method, "r": r, "tokens_per_layer": counts[0], "ms_per_step": statistics.median(times) * 1e3,
               "videos_per_s": statistics.median(b / t for t in times), "peak_gib": et._peak_gib(device),
               "loss": loss, "loss_finite": math.isfinite(loss)}
        rows.append(row)
    base = next((r for r in rows if r["method"] == "none"), None)
    for row in rows:
        row["vs_no_merge"] = row["videos_per_s"] / base["videos_per_s"] if base and row is not base else None
        label = et.METHOD_LABELS.get(row["method"], row["method"])
        lines.append(line(
            "d", f"{cfg.train_model} {cfg.train_frames}f b{b} {cfg.train_dtype} train step", f"fused / {label}",
            row["videos_per_s"], row["ms_per_step"], row["peak_gib"], None,
            "" if row["vs_no_merge"] is None else f"{row['vs_no_merge']:.2f}x",
            f"loss {row['loss']:.3f}" if row["loss_finite"] else "loss NOT FINITE"))
    del model, optimizer
    return {"rows": rows, "lines": lines, "status": "ok" if all(r["loss_finite"] for r in rows) else "error",
            "note": "VTC + VTM (one hard negative each way) + backward + AdamW step, random video and text; "
                    f"median of {cfg.train_steps} steps after {cfg.train_warmup}"}


# ----------------------------------------------------------------------------------------------- (e) compile


def part_compile(ctx: Context) -> dict:
    """torch.compile of the target encoder, without merging and with vid-TLDR (fused): compile time (first call),
    videos/s against eager, number of graphs (1 = no graph break), max |compiled - eager|."""
    from torch._dynamo.utils import counters

    cfg, device = ctx.cfg, ctx.device
    frames, _, dtype = cfg.target
    batch = cfg.compile_batch
    encoder = et.build_encoder(cfg.model, device, frames, ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed)
    video = torch.randn(et.video_shape(encoder, batch, frames), generator=gen).to(device)
    rows, lines = [], []
    for key in ("fast-none", "fast-vidtldr"):
        spec = et.ROW_SPECS[key]
        setting = f"fused / {spec.label}"
        if ctx.expired():
            lines.append(line("e", f"{cfg.model} {frames}f b{batch} {dtype}", setting, result="skipped: time guard"))
            continue
        et.configure(encoder, spec, cfg.r)
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(encoder, backend=cfg.compile_backend)
        with torch.inference_mode(), et.precision(device, dtype):
            eager_out = encoder(video).float()
            t0 = time.perf_counter()
            out = compiled(video).float()
            et._sync(device)
            compile_s = time.perf_counter() - t0
            graphs = int(counters["stats"]["unique_graphs"])
            diff = (out - eager_out).abs().max().item() if out.shape == eager_out.shape else math.inf
            eager = et.time_encoder(encoder, video, cfg.compile_iters, cfg.warmup)
            fast = et.time_encoder(compiled, video, cfg.compile_iters, cfg.warmup)
        row = {"key": key, "backend": cfg.compile_backend, "compile_s": compile_s, "graphs": graphs,
               "max_abs_diff": diff, "eager_videos_per_s": statistics.median(batch / t for t in eager),
               "videos_per_s": statistics.median(batch / t for t in fast),
               "ms_per_batch": statistics.median(fast) * 1e3}
        row["vs_eager"] = row["videos_per_s"] / row["eager_videos_per_s"]
        rows.append(row)
        lines.append(line("e", f"{cfg.model} {frames}f b{batch} {dtype}",
                          f"{setting}, compiled ({cfg.compile_backend})",
                          row["videos_per_s"], row["ms_per_batch"], None, None, f"{row['vs_eager']:.2f}x vs eager",
                          f"compile {compile_s:.1f} s, {graphs} graph(s), max diff {diff:.1e}"))
        del compiled
    torch._dynamo.reset()
    del encoder, video
    return {"rows": rows, "lines": lines}


# ----------------------------------------------------------------------------------------------- (f) wall clock


def part_wall_clock(ctx: Context) -> dict:
    """``benchmarks/wall_clock.py``'s cells on the target model and schedule: videos/s of none / ToMe / vid-TLDR /
    vid-TLDR RepShift / random drop over batch 1, 2, 8, 32 (dry run: 1, 2), each dtype, fused and explicit
    attention; the merge step's own ms per batch and share; speed-up over no merging."""
    cfg = ctx.cfg
    wcfg = wc.WallClockConfig(model=cfg.model, frames=cfg.frames[0], schedules=cfg.r, dtypes=cfg.dtypes,
                              batches=(1, 2) if ctx.dry_run else (1, 2, 8, 32), iters=cfg.iters, warmup=cfg.warmup,
                              profile_iters=cfg.profile_iters, seed=ctx.seed)
    report = wc.run(wcfg, ctx.device, deadline=ctx.deadline, log=lambda _: None)
    lines = [line("f", f"{cfg.model} {wcfg.frames}f b{r.batch} {r.dtype}",
                  f"{r.attention} / {et.METHOD_LABELS.get(r.method, r.method)}", r.videos_per_s, r.ms_per_batch, None,
                  None if r.merge_share is None else 100 * r.merge_share, wc._num(r.vs_none, ".2f", "x"),
                  r.note or wc._num(r.merge_ms_per_batch, ".2f", " merge ms/batch")) for r in report.rows]
    return {"status": "ok" if all(r.status == "ok" for r in report.rows) else "partial", "lines": lines,
            "rows": [dataclasses.asdict(r) for r in report.rows], "note": wc.caption(report)}


def part_padding_packing(ctx: Context) -> dict:
    """``benchmarks/padding_packing.py``'s rows on the target model (8 frames, batch 8; dry run: its quick size):
    no merging, fixed r, threshold mode padded / packed / packed with a dense block mask, each dtype."""
    cfg, lines, reports = ctx.cfg, [], []
    for dtype in cfg.dtypes:
        pcfg = pp.PPConfig(model=cfg.model, frames=8 if not ctx.dry_run else cfg.frames[0], batch=8 if not ctx.dry_run
                           else 2, r=cfg.r, dtype=dtype, iters=cfg.iters, warmup=cfg.warmup, seed=ctx.seed)
        report = pp.run(pcfg, ctx.device, deadline=ctx.deadline, log=lambda _: None)
        reports.append(report)
        lines += [line("g", f"{cfg.model} {pcfg.frames}f b{pcfg.batch} {dtype}", r["label"], r["videos_per_s"],
                       r["ms_per_batch"], result=r["note"] or f"tokens {r['tokens_out']}") for r in report["rows"]]
    ok = all(not r["note"] for rep in reports for r in rep["rows"])
    return {"status": "ok" if ok else "partial", "lines": lines, "reports": reports}


PART_FUNCTIONS: dict[str, Callable[[Context], dict]] = {
    "a": part_encoder, "b": part_saliency, "c": part_deepspeed, "d": part_training, "e": part_compile,
    "f": part_wall_clock, "g": part_padding_packing}


# ----------------------------------------------------------------------------------------------- targets


def _find(rows: list[dict], model: str, key: str, frames: int, batch: int, dtype: str) -> dict | None:
    for row in rows:
        if (row["model"], row["key"], row["frames"], row["batch"], row["dtype"]) == (model, key, frames, batch, dtype):
            return row if row.get("error") is None and row.get("videos_per_s") is not None else None
    return None


def evaluate_targets(report: dict) -> list[dict]:
    """The "Fast merging" targets against part (a)'s rows: PASS / FAIL, or NOT MEASURED when a row is missing."""
    cfg = report["config"]
    model, (frames, batch, dtype) = cfg["model"], cfg["target"]
    rows = report["parts"]["a"].get("rows", [])
    where = f"{model} {frames}f b{batch} {dtype}, fused vid-TLDR"
    fast = _find(rows, model, "fast-vidtldr", frames, batch, dtype)
    targets = []

    def add(name: str, setting: str, value: float | None, fmt: str, op: str, bound: float, why: str = "") -> None:
        if value is None:
            status, measured = "NOT MEASURED", why or "row missing or failed"
        else:
            ok = value >= bound if op == ">=" else value <= bound
            status, measured = _verdict(ok), format(value, fmt)
        targets.append({"name": name, "setting": setting, "target": f"{op} {format(bound, fmt)}",
                        "measured": measured, "status": status})

    add("fast vid-TLDR vs fast no merging", where, fast and fast["vs_no_merge"], ".2f", ">=", 1.6)
    add("fast vid-TLDR vs explicit vid-TLDR", where, fast and fast["vs_ref_vidtldr"], ".2f", ">=", 6.0)
    add("peak memory (GiB)", where, fast and fast["peak_gib"], ".2f", "<=", 3.5,
        "not measured on CPU" if fast and fast["peak_gib"] is None else "")
    add("merge step share of encoder time", where, fast and fast["merge_share"], ".3f", "<=", 0.10)
    one = min(cfg["batches"])
    for f in cfg["frames"]:
        row = _find(rows, model, "fast-vidtldr", f, one, dtype)
        add(f"batch {one}: merged vs unmerged (videos/s ratio)", f"{model} {f}f b{one} {dtype}, fused vid-TLDR",
            row and row["vs_no_merge"], ".2f", ">=", 1.0)
    return targets


# ----------------------------------------------------------------------------------------------- output

TABLE_COLUMNS = ("part", "item", "setting", "videos/s", "ms", "peak GiB", "merge %", "ratio", "result")
NUMERIC = {"videos/s", "ms", "peak GiB", "merge %"}


def table_rows(report: dict) -> list[list[str]]:
    """Every part's lines, then the targets: the one table (cells as text)."""
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = []
    for key, part in report["parts"].items():
        lines = part.get("lines") or []
        if not lines:
            reason = part.get("reason") or part.get("error") or part["status"]
            lines = [line(key, PARTS[key], result=f"{part['status']}: {reason}")]
        for ln in lines:
            rows.append([f"({ln['part']})", ln["item"], ln["setting"], num(ln["videos_per_s"], ".1f"),
                         num(ln["ms"], ".1f"), num(ln["peak_gib"], ".2f"), num(ln["merge_pct"], ".1f"), ln["ratio"],
                         ln["result"]])
    for t in report.get("targets", []):
        rows.append(["target", t["name"], t["setting"], "-", "-", "-", "-", t["measured"],
                     f"{t['status']} ({t['target']})"])
    return rows


def markdown_table(report: dict) -> list[str]:
    out = ["| " + " | ".join(TABLE_COLUMNS) + " |",
           "|" + "|".join("---:" if c in NUMERIC else "---" for c in TABLE_COLUMNS) + "|"]
    return out + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table_rows(report)]


def print_table(report: dict) -> None:
    title = f"GPU suite{' (DRY RUN, tiny CPU sizes)' if report['dry_run'] else ''}: {report['device']}"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # a bare image without rich: the Markdown table
        print(title)
        print("\n".join(markdown_table(report)))
        return
    table = Table(title=title)
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="right" if col in NUMERIC else "left")
    previous = None
    for row in table_rows(report):
        if previous is not None and row[0] != previous:
            table.add_section()
        previous = row[0]
        table.add_row(*row)
    Console(width=220).print(table)


def section_body(report: dict) -> str:
    v = report["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "cuda", *VERSION_PACKAGES) if k in v)
    parts = report["parts"]
    status = "; ".join(f"({k}) {PARTS[k]}: {p['status']} in {p['seconds']:.0f} s" for k, p in parts.items())
    lines = []
    if report["dry_run"]:
        lines += ["**DRY RUN** (tiny models on CPU, one iteration per row): it checks that every part runs; its "
                  "numbers and verdicts mean nothing.", ""]
    lines += [
        f"Measured {report['date']} on {report['device']} ({versions}).",
        "",
        f"Command: `{report['command']}` ({report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget; "
        f"{status}). Every number of the run, errors included, is in the JSON it wrote.",
        "",
        ("(a): the mergeable encoder of each model (`create_model`, seeded random weights), settings applied with "
         f"`apply_merge`; UMT r = [{report['config']['r']}], VideoMAE r = [{report['config']['videomae_r']}]; "
         f"{parts['a'].get('note', '')}; ratio = videos/s over the same attention without merging (fast vid-TLDR "
         "also over explicit vid-TLDR); peak GiB = max_memory_allocated incl. weights and input. "
         "(b): raw saliency relative errors, kernel vs chunked / vs float64. "
         "(c): ms = wall time of the command. (d): ratio = videos/s over the step without merging. "
         "(e): compile = the first call. (f): `benchmarks/wall_clock.py`, ratio = videos/s over no merging at the "
         "same dtype / attention / batch, merge % = the merge slots' share of a timed eager pass. "
         "Targets: \"Fast merging\" (issue 6), fused path."),
        "",
        *markdown_table(report),
    ]
    return "\n".join(lines)


def versions(device: torch.device) -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        out["cuda"] = str(torch.version.cuda)
    out.update({name: et._pkg_version(name) for name in VERSION_PACKAGES})
    return out


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every part at tiny sizes on CPU (DeepSpeed skipped)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="run only these parts")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; the time guard skips what does not fit")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument("--write", type=Path, default=None, help="replace the '## GPU suite' section of this file")
    parser.add_argument("--render", type=Path, default=None, help="print / --write the table of a saved JSON report")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="DeepSpeed runs, generated data and logs (default: a temporary folder)")
    parser.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "data" / "reference" / "fixtures")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the suite (or render a saved report); returns the report. Exit status 1 when a part failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render is not None:
        if not args.render.is_file():
            _usage_error(f"--render {args.render}: no such file (a JSON written by --json)")
        report = json.loads(args.render.read_text())
    else:
        report = run_suite(args, argv)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1, default=str))
            print(f"wrote {args.json}")
    print_table(report)
    if args.write is not None:
        et.write_section(args.write, section_body(report), heading=SECTION)
        print(f"updated {args.write}")
    return report


def _usage_error(message: str) -> None:
    """One ``error:`` line and exit code 2, as the project's other commands."""
    print(f"error: gpu_suite: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_suite(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if not args.dry_run and device.type != "cuda":
        _usage_error("the real run needs a CUDA device; use --dry-run for tiny sizes on CPU")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            _usage_error("CUDA is not available here; use --dry-run for tiny sizes on CPU")
        torch.cuda.set_device(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = dry_config() if args.dry_run else gpu_config()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_suite_")))
        ctx = Context(cfg, device, args.dry_run, Path(workdir), args.fixtures)
        t0 = time.monotonic()
        parts = run_parts(ctx, args.parts, args.budget)
        elapsed = time.monotonic() - t0
    report = {
        "suite": "benchmarks/gpu_suite.py", "dry_run": args.dry_run,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": et.device_name(device), "versions": versions(device),
        "command": " ".join(["python benchmarks/gpu_suite.py", *(shlex.quote(a) for a in argv)]),
        "budget_s": args.budget, "elapsed_s": round(elapsed, 1),
        "config": {**dataclasses.asdict(cfg), "target": list(cfg.target)}, "parts": parts,
    }
    report["targets"] = evaluate_targets(report)
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any(p["status"] == "error" for p in result["parts"].values()) else 0)
