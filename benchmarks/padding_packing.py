"""Padding vs packing vs the fixed-r method at the same mean token count: videos/s of one encoder, warm-up excluded.

Rows (ToMe by default, ``--method``):
* no merging;
* fixed r: the schedule, every video the same count (no per-row path);
* threshold, padded: DyMU's threshold mode, thresholds calibrated on the benchmark batch itself so that the mean r
  per block is the schedule's (the rows then hold different counts, padded at the end);
* threshold, packed: the same thresholds, the rows concatenated into one, block-diagonal attention (nested / per-row
  sdpa, ``ops.attention.PACKED_FUSED``), and "packed, dense mask": one sdpa call with a (T x T) block mask.
The batch mixes still and busy videos (video b repeats one frame with noise growing with b), so the counts differ.

    python benchmarks/padding_packing.py                 # UMT-B/16, 8 frames, batch 8, fp32, CPU
    python benchmarks/padding_packing.py --quick         # umt_demo, seconds
    python benchmarks/padding_packing.py --json pp.json --device cuda

``run(PPConfig(...), device)`` gives the rows to other scripts (``benchmarks/gpu_suite.py`` part (g)).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.backbones import create_model  # noqa: E402
from vidtldr_pl.flops import encoder_flops, row_flops  # noqa: E402
from vidtldr_pl.merging import MergeSetting, MergeState, apply_merge, find_mergeable  # noqa: E402

attention_ops = importlib.import_module("vidtldr_pl.ops.attention")


@dataclass
class PPConfig:
    """One benchmark: model, frames, batch, schedule (the fixed r and the threshold mode's target), dtype."""

    model: str = "umt_b16"
    frames: int = 8
    batch: int = 8
    r: str = "100,100,100,60,60,60"
    method: str = "tome"
    dtype: str = "fp32"
    attention: str = "fused"
    iters: int = 3
    warmup: int = 1
    seed: int = 0
    modes: tuple[str, ...] = ("none", "fixed", "pad", "pack", "pack-mask")


def quick_config() -> PPConfig:
    return PPConfig(model="umt_demo", frames=8, batch=8, r="72,36,18", iters=3, warmup=1)


@dataclass
class PPRow:
    mode: str
    label: str
    videos_per_s: float | None = None
    ms_per_batch: float | None = None
    tokens_out: dict = field(default_factory=dict)
    gflops: float | None = None
    note: str = ""


LABELS = {"none": "no merging", "fixed": "fixed r (padding-free)", "pad": "threshold, padded",
          "pack": "threshold, packed", "pack-mask": "threshold, packed (dense block mask)"}


def mixed_videos(encoder: torch.nn.Module, batch: int, seed: int) -> Tensor:
    """(batch, 3, T, H, W): video b is one frame repeated plus noise of scale b / (batch - 1): still to busy."""
    g = torch.Generator().manual_seed(seed)
    shape = encoder.example_input(batch).shape
    base = torch.randn(shape[0], shape[1], 1, *shape[3:], generator=g).expand(shape)
    scale = torch.linspace(0.0, 1.0, batch).view(batch, 1, 1, 1, 1) if batch > 1 else torch.ones(1, 1, 1, 1, 1)
    return base + scale * torch.randn(shape, generator=g)


def encode(encoder: torch.nn.Module, video: Tensor, state: MergeState) -> Tensor:
    """The encoder's forward with the batching of ``state`` (packing enters after the embedding)."""
    x = encoder.embed(video)
    if state.grid is None and hasattr(encoder, "token_grid"):
        state.grid = encoder.token_grid(video)
    x = state.enter(x)
    for block in encoder.blocks:
        x = block(x, state)
    return encoder.norm(state.leave(x))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(encoder: torch.nn.Module, video: Tensor, batching: str, cfg: PPConfig, device: torch.device
              ) -> tuple[float, MergeState]:
    """Seconds per batch (mean of cfg.iters after cfg.warmup) and the last MergeState."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else contextlib.nullcontext()
    seconds = []
    for i in range(cfg.warmup + cfg.iters):
        state = encoder.new_merge_state()
        state.batching = batching
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            encode(encoder, video, state)
        _sync(device)
        if i >= cfg.warmup:
            seconds.append(time.perf_counter() - t0)
    return sum(seconds) / len(seconds), state


def _tokens(state: MergeState, batch: int) -> dict:
    counts = state.row_counts()
    final = counts[-1].double() if counts is not None else torch.full((batch,), float(state.tokens_per_layer[-1]))
    return {"mean": round(float(final.mean()), 1), "min": int(final.min()), "max": int(final.max())}


def run(cfg: PPConfig, device: torch.device | str = "cpu", deadline: float = math.inf,
        log: Callable[[str], None] = print) -> dict:
    """Every mode of cfg: {"config", "rows": [PPRow as dict], "thresholds", "target_r", "achieved_r"}."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_frames=cfg.frames, attention=cfg.attention).eval().to(device)
    encoder = find_mergeable(model)[0]
    video = mixed_videos(encoder, cfg.batch, cfg.seed).to(device)
    rows: list[PPRow] = []
    apply_merge(model, MergeSetting(method="threshold", r=cfg.r,
                                    method_options={"base": cfg.method, "calibrate": True}))
    wrapper = encoder.merge_settings.method
    with torch.no_grad():
        encode(encoder, video, encoder.new_merge_state())
    thresholds = wrapper.calibrated()
    wrapper.calibrate, wrapper.thresholds = False, thresholds
    for mode in cfg.modes:
        if time.monotonic() > deadline:
            rows.append(PPRow(mode, LABELS[mode], note="skipped: out of time"))
            continue
        saved_kernel = attention_ops.PACKED_FUSED
        try:
            if mode in ("none", "fixed"):
                apply_merge(model, MergeSetting(method="none" if mode == "none" else cfg.method,
                                                r=None if mode == "none" else cfg.r))
            else:
                apply_merge(model, MergeSetting(method="threshold", r=cfg.r,
                                                method_options={"base": cfg.method, "thresholds": thresholds}))
                attention_ops.PACKED_FUSED = "mask" if mode == "pack-mask" else saved_kernel
            batching = "pack" if mode.startswith("pack") else "pad"
            seconds, state = time_mode(encoder, video, batching, cfg, device)
            counts = state.row_counts()
            flops = row_flops(encoder, counts.cpu())["gflops"]["mean"] if counts is not None else \
                encoder_flops(encoder).gflops
            rows.append(PPRow(mode, LABELS[mode], cfg.batch / seconds, 1000 * seconds, _tokens(state, cfg.batch),
                              flops))
            log(f"{LABELS[mode]}: {cfg.batch / seconds:.2f} videos/s, tokens out {rows[-1].tokens_out}")
        except Exception as err:  # noqa: BLE001 - one failed mode is a row, not a failed benchmark
            rows.append(PPRow(mode, LABELS[mode], note=f"ERROR {type(err).__name__}: {str(err)[:120]}"))
        finally:
            attention_ops.PACKED_FUSED = saved_kernel
    return {"config": asdict(cfg), "device": str(device), "thresholds": thresholds,
            "rows": [asdict(r) for r in rows]}


def markdown(report: dict) -> str:
    """The report as a markdown table."""
    cfg = report["config"]
    out = [f"{cfg['model']}, {cfg['frames']} frames, batch {cfg['batch']}, {cfg['dtype']}, {cfg['attention']} "
           f"attention, {cfg['method']}, r = [{cfg['r']}] (threshold mode calibrated on the batch to the same mean r), "
           f"{cfg['iters']} timed iterations after {cfg['warmup']} warm-up, {report['device']}", "",
           "| batching | videos/s | ms / batch | tokens out (mean / min / max) | GFLOPs / video (mean) | note |",
           "|---|---:|---:|---|---:|---|"]
    for r in report["rows"]:
        t = r["tokens_out"]
        tokens = f"{t['mean']} / {t['min']} / {t['max']}" if t else "-"
        vps = f"{r['videos_per_s']:.2f}" if r["videos_per_s"] else "-"
        ms = f"{r['ms_per_batch']:.0f}" if r["ms_per_batch"] else "-"
        gf = f"{r['gflops']:.2f}" if r["gflops"] else "-"
        out.append(f"| {r['label']} | {vps} | {ms} | {tokens} | {gf} | {r['note']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="umt_demo (288 tokens), seconds on a CPU")
    parser.add_argument("--model")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--r")
    parser.add_argument("--method", help="the matching method (tome, vidtldr, ...)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"])
    parser.add_argument("--attention", choices=["fused", "explicit", "flex"])
    parser.add_argument("--iters", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    cfg = quick_config() if args.quick else PPConfig()
    for name in ("model", "frames", "batch", "r", "method", "dtype", "attention", "iters"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    report = run(cfg, args.device)
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                         "load": os.getloadavg(), "torch": torch.__version__}
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
