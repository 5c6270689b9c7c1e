"""Calibrate threshold mode (DyMU): per-block similarity thresholds that hit a target mean r on a split.

    python -m vidtldr_pl.calibrate --config configs/demo_umt.yaml --method vidtldr --target-r 72,36,18 \\
        --out thresholds.json [--split val] [--max-clips 200]

Every block of the target schedule merges, per batch, the r x B best pairs of the batch (DyMU's batch-level
selection); the score of the best pair left unmerged is that batch's threshold, and a block's threshold is the mean
over batches. A second pass runs the split with those thresholds (every pair above them merges, per video) and
records the mean r each block achieved. Then use the file:

    python evaluate.py --config configs/demo_umt.yaml --merge.method=threshold --merge.r=[72,36,18] \\
        --merge.method_options='{base: vidtldr, thresholds: thresholds.json}' --data.init_args.eval_batch_size=1

(or method_options {base: vidtldr, thresholds: thresholds.json} in a compare row).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from torch import Tensor, nn

SPLITS = ("val", "test")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an evaluate.py config (model, checkpoint, data)")
    parser.add_argument("--method", default="tome", help="the matching method thresholded (tome, vidtldr, ...)")
    parser.add_argument("--method-options", default="{}",
                        help='inner method options as JSON, e.g. \'{"metric": "keys"}\'')
    parser.add_argument("--target-r", required=True, help="the mean r per block to hit, e.g. 72,36,18")
    parser.add_argument("--out", required=True, help="the thresholds JSON to write")
    parser.add_argument("--split", default="val", choices=SPLITS)
    parser.add_argument("--max-clips", type=int, default=None, help="calibrate on the first clips of the split only")
    parser.add_argument("--attention", default=None, choices=["fused", "explicit", "flex"])
    return parser.parse_known_args(argv)


def encode(task: Any, video: Tensor) -> None:
    """Run the task's video encoder on a batch's video (B, T, 3, H, W) as its evaluation does."""
    model = task.model
    vision = getattr(model, "vision_encoder", None)
    if isinstance(vision, nn.Module):  # UMT / UMT-QA: the vision tower alone (its fusion layers refuse padded rows,
        vision(video.permute(0, 2, 1, 3, 4))  # and the thresholds depend on the merges only)
    elif hasattr(model, "encode_vision"):
        model.encode_vision(video)
    else:
        task(video)


def _batches(datamodule: Any, split: str, max_clips: int | None):
    datamodule.setup("validate" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    seen = 0
    for batch in loader:
        video = batch["video"]
        if max_clips is not None:
            video = video[: max(0, max_clips - seen)]
        if video.shape[0] == 0:
            break
        seen += video.shape[0]
        yield video


def measure_r(task: Any, encoder: Any, videos: list[Tensor]) -> tuple[list[float], list[float], int]:
    """Run videos through the task's encoder; -> (mean r per block over the encoder's rows (videos, or frames of a
    frame-wise encoder), mean tokens per block, rows); the tokens entering the first block: ``num_tokens``."""
    import torch

    states = []

    def keep_state(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        state = args[1] if len(args) > 1 else kwargs.get("state")
        states.append((state, args[0].shape[0]))

    handle = encoder.register_forward_hook(keep_state, with_kwargs=True)
    try:
        with torch.no_grad():
            for video in videos:
                encode(task, video)
    finally:
        handle.remove()
    counts = []
    for state, batch in states:
        rows = state.row_counts()
        counts.append(rows if rows is not None else torch.tensor(state.tokens_per_layer)[:, None].expand(-1, batch))
    counts = torch.cat(counts, dim=1).double()  # (L, videos)
    entering = encoder.num_tokens
    before = torch.cat([torch.full_like(counts[:1], float(entering)), counts[:-1]])
    return (before - counts).mean(1).tolist(), counts.mean(1).tolist(), counts.shape[1]


def calibrate(config_argv: list[str], method: str, method_options: dict, target_r: str, split: str = "val",
              max_clips: int | None = None, attention: str | None = None) -> dict[str, Any]:
    """Calibrate thresholds for the model / data of an evaluate.py config; -> the record ``save_thresholds`` writes."""
    import torch

    from .cli import build_cli
    from .merging import MergeSetting, apply_merge, find_mergeable
    from .merging.schedule import build_schedule

    cli = build_cli(["--config", *config_argv], "evaluate")
    task = cli.model.eval()
    setting = MergeSetting(method="threshold", r=target_r, attention=attention,
                           method_options={"base": method, "calibrate": True, **method_options})
    apply_merge(task, setting)
    encoder = find_mergeable(task)[0]
    wrapper = encoder.merge_settings.method
    schedule = build_schedule(target_r, len(encoder.blocks))
    videos = list(_batches(cli.datamodule, split, max_clips))
    if not videos:
        raise ValueError(f"split {split!r} gave no clips to calibrate on")
    t0 = time.perf_counter()
    with torch.no_grad():
        for video in videos:
            encode(task, video)
    thresholds = wrapper.calibrated()
    thresholds = [thresholds[i] if i < len(thresholds) and schedule[i] else None for i in range(len(schedule))]
    wrapper.calibrate, wrapper.thresholds = False, thresholds
    achieved, tokens, clips = measure_r(task, encoder, videos)
    return {
        "method": wrapper.method_name, "method_options": method_options, "target_r": schedule,
        "achieved_mean_r": [round(a, 3) for a in achieved], "mean_tokens_per_layer": [round(t, 2) for t in tokens],
        "split": split, "clips": clips, "batches": len(videos), "config": config_argv,
        "model": getattr(task.hparams, "model", None) if hasattr(task, "hparams") else None,
        "attention": attention, "seconds": round(time.perf_counter() - t0, 1), "thresholds": thresholds,
    }


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    from .merging.threshold import save_thresholds

    try:
        options = json.loads(args.method_options)
        if not isinstance(options, dict):
            raise ValueError(f"--method-options must be a JSON object, got {args.method_options!r}")
        record = calibrate([args.config, *rest], args.method, options, args.target_r, args.split, args.max_clips,
                           args.attention)
    except (ValueError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    thresholds = record.pop("thresholds")
    path = save_thresholds(args.out, thresholds, **record)
    for i, (target, got, tau) in enumerate(zip(record["target_r"], record["achieved_mean_r"], thresholds)):
        if target and tau is not None:
            print(f"block {i}: threshold {tau:.5f}, target r {target}, achieved mean r {got:.2f}")
    print(f"wrote {path} ({record['clips']} clips of the {record['split']} split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
