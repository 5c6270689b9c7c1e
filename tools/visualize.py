"""Saliency and merge maps of one video: ``python tools/visualize.py --config configs/demo_umt.yaml --video clip.mp4
--out DIR [--method vidtldr] [--r 72,36,18]``.

Writes ``<stem>_grid.png`` (rows: frames, the saliency heat map at the first merging block, the background mask,
the merged groups of the final tokens), ``<stem>.gif`` (the same, animated over the frames), ``<stem>_share.png``
/ ``.svg`` (each frame's share of the saliency: the paper's Fig. 5) and ``<stem>.json`` (shares, tokens per block).
The model comes from the config (model name, checkpoint); frames and size from its vision encoder. A tool, not part
of the library: it decodes the file with the data side's evaluation decoder and transform (``data_modules``), which
the library never imports; the maps and pictures are the library's (``vidtldr_pl.explore``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidtldr_pl.errors import EXIT_USAGE, UserError

if TYPE_CHECKING:  # the heavy imports happen in the functions, so that --help answers at once
    from torch import Tensor, nn

    from vidtldr_pl.explore.maps import MergeMaps
    from vidtldr_pl.merging import MergeSetting


def load_video(path: str | Path, num_frames: int, img_size: int, tubelet: int = 1) -> tuple[Tensor, Tensor]:
    """A video file -> (model input (1, 3, T, H, W) float, display frames (T / tubelet, H, W, 3) uint8), with the
    evaluation decoding (middle frames of T segments) and transform."""
    from vidtldr_pl.data_modules.transforms import VideoTestTransform, resize_uint8
    from vidtldr_pl.data_modules.video import VideoDecoder

    clip = VideoDecoder(num_frames=num_frames, sample="middle")(str(path))
    video = VideoTestTransform(img_size)(clip.frames)  # (T, 3, H, W)
    shown = resize_uint8(clip.frames, (img_size, img_size))[::tubelet].permute(0, 2, 3, 1).contiguous()
    return video.permute(1, 0, 2, 3)[None], shown


def video_maps(model: nn.Module, video: Tensor, setting: MergeSetting | None = None) -> MergeMaps:
    """Maps of video (1, 3, T, H, W) through model's first mergeable encoder; ``setting``: apply it first (None:
    keep the model's current merge setting)."""
    from vidtldr_pl.explore.maps import merge_maps
    from vidtldr_pl.merging import apply_merge, find_mergeable

    if setting is not None:
        apply_merge(model, setting)
    encoders = find_mergeable(model)
    if not encoders:
        raise ValueError(f"{type(model).__name__} has no mergeable encoder")
    encoder = encoders[0]
    param = next(encoder.parameters())
    return merge_maps(encoder, video.to(param.device, param.dtype))


def visualize_file(model: nn.Module, video_path: str | Path, out_dir: str | Path, setting: MergeSetting,
                   stem: str | None = None) -> dict[str, Any]:
    """Decode ``video_path`` as the model's encoder expects, compute the maps under ``setting``, write the files;
    returns {"paths": {...}, "share": [[...]], "tokens_per_layer": [...]}."""
    import torch

    from vidtldr_pl.explore.render import write_all
    from vidtldr_pl.merging import find_mergeable

    encoder = find_mergeable(model)[0]
    cfg = encoder.cfg
    video, frames = load_video(video_path, cfg.num_frames, cfg.img_size, cfg.tubelet_size)
    model.eval()
    with torch.no_grad():
        maps = video_maps(model, video, setting)
    stem = stem or Path(video_path).stem
    title = f"{Path(video_path).name}: {setting.label} r={setting.r}, tokens {maps.tokens_per_layer}"
    paths = write_all(frames, maps, out_dir, stem, title)
    info = {"video": str(video_path), "setting": {"method": setting.method, "r": setting.r},
            "merge_layers": maps.layers, "share": maps.share.tolist(), "tokens_per_layer": maps.tokens_per_layer,
            "background_fraction": float(maps.background.float().mean()),
            "paths": {k: str(v) for k, v in paths.items()}}
    (Path(out_dir) / f"{stem}.json").write_text(json.dumps(info, indent=2))
    return info


def default_r(config_argv: list[str], method: str) -> Any:
    """r of the config's ``compare`` row for ``method`` (None when there is none)."""
    import yaml

    from vidtldr_pl.preflight import resolve_config_args

    argv = resolve_config_args(config_argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            cfg = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
            for row in cfg.get("compare") or []:
                if row.get("method") == method and row.get("r") is not None:
                    return row["r"]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/visualize.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="vidtldr", help="a method with a token saliency (vidtldr, vidtldr_repshift)")
    p.add_argument("--r", default=None, help="r schedule (default: the config's compare row for the method)")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not Path(args.video).is_file():
        print(f"error: --video {args.video}: no such file", file=sys.stderr)
        return EXIT_USAGE
    from vidtldr_pl.cli import build_cli
    from vidtldr_pl.merging import MergeSetting
    from vidtldr_pl.preflight import resolve_config_args
    from vidtldr_pl.sweep import quiet_config

    r = args.r if args.r is not None else default_r(rest, args.method)
    if r is None:
        print(f"error: no r schedule for {args.method}: pass --r (e.g. --r 72,36,18)", file=sys.stderr)
        return EXIT_USAGE
    try:
        cli = build_cli(quiet_config(resolve_config_args(rest)), "evaluate")
        info = visualize_file(cli.model, args.video, args.out, MergeSetting(method=args.method, r=r))
    except (ValueError, UserError) as err:  # a bad option value, a missing or malformed input
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(info["paths"], indent=2))
    share = ", ".join(f"{100 * s:.1f}" for s in info["share"][0])
    print(f"tokens per block {info['tokens_per_layer']}; background {100 * info['background_fraction']:.0f} % of the "
          f"patches; per-frame saliency share at the first merge (%): {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
