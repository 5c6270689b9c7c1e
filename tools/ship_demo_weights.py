"""Turn a finished demo training run into the weights that ship with the project, with their provenance.

    python tools/ship_demo_weights.py RUN/checkpoints/best-*.ckpt \
        --stage "python train.py --config configs/demo_umt.yaml --model.init_args.checkpoint=null ..." RUN1/logs \
        [--stage "python train.py --config configs/demo_umt.yaml --model.init_args.checkpoint=stage1.safetensors ..."
         RUN2/logs ...] [--note "..."]
    python tools/ship_demo_weights.py RUN/checkpoints/best-*.ckpt --weights videomae_demo_synthetic \
        --stage "python train.py --config configs/demo_videomae.yaml --model.init_args.checkpoint=null" RUN/logs

``--weights`` names the shipped weights (a key of DEMOS: its config, preset and validation metrics). Each ``--stage``
is one training command followed by its CSV logger folder(s) (several when the run was resumed). Writes
vidtldr_pl/weights/<weights>.safetensors (float16; UMT in the official key layout via vidtldr_pl.export, other
models as their own state dict, checked to load strictly) and <weights>.json: per stage the command, the validation
metrics of every epoch read from the CSV logs and the wall time of each log folder (hparams.yaml written -> last
metrics line); the seeds, machine and versions.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.backbones.registry import WEIGHTS_DIR, create_model, pretrained_cfg  # noqa: E402


@dataclass(frozen=True)
class Demo:
    """A shipped demo model: its config (under configs/), registry preset and the validation metrics logged per
    epoch (the first one says that a CSV row is a validation row)."""

    config: str
    preset: str
    metrics: tuple[str, ...]


DEMOS = {
    "umt_demo_synthetic": Demo("demo_umt.yaml", "umt_demo", (
        "itm/img_r1", "itm/img_r5", "itm/txt_r1", "itm/r_mean", "itc/img_r1", "itc/txt_r1", "itc/r_mean")),
    "videomae_demo_synthetic": Demo("demo_videomae.yaml", "videomae_demo", ("top1", "top5")),
    "umt_qa_demo_synthetic": Demo("demo_qa_umt.yaml", "umt_qa_demo", ("qa/acc",)),
    "vificlip_demo_synthetic": Demo("demo_vificlip_train.yaml", "vificlip_demo", (
        "itc/img_r1", "itc/img_r5", "itc/txt_r1", "itc/r_mean")),
}


def validation_history(log_dirs: list[Path], metrics: tuple[str, ...] = DEMOS["umt_demo_synthetic"].metrics,
                       ) -> list[dict[str, float]]:
    """Every validation row (epoch, step, metrics) of the CSV logs, in order; a later folder (a resumed run)
    replaces the rows of the epochs it repeats."""
    rows: dict[int, dict[str, float]] = {}
    for folder in log_dirs:
        with open(folder / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row.get(metrics[0]):
                    rows[int(row["epoch"])] = {"epoch": int(row["epoch"]), "step": int(row["step"]),
                                               **{k: round(float(row[k]), 2) for k in metrics}}
    return [rows[e] for e in sorted(rows)]


def export_weights(checkpoint: Path, out: Path, preset: str) -> Path:
    """The model of a Lightning checkpoint (``model.*``) as a float16 safetensors file; UMT in the official layout
    (vidtldr_pl.export), any other preset as its own state dict, refused unless it loads strictly."""
    if pretrained_cfg(preset).task == "retrieval" and preset.startswith("umt_"):
        from vidtldr_pl.export import export

        return export(checkpoint, out, dtype="float16", preset=preset)
    from safetensors.torch import save_file

    from vidtldr_pl.backbones.checkpoint import load_state_into, read_state_dict, strip_prefix

    state = strip_prefix(read_state_dict(checkpoint), "model.")
    load_state_into(create_model(preset), state, str(checkpoint), strict=True)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, str(out), metadata={"format": "pt", "preset": preset, "source": checkpoint.name})
    return out


def wall_minutes(folder: Path) -> float:
    start = (folder / "hparams.yaml").stat().st_mtime
    return round(((folder / "metrics.csv").stat().st_mtime - start) / 60, 1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores available, {gpu}"


def precision(command: str, config: dict) -> str:
    """The trainer precision of a training command (its --trainer.precision, else the config's)."""
    for part in command.split():
        if part.startswith("--trainer.precision="):
            return part.split("=", 1)[1]
    return str(config.get("trainer", {}).get("precision", "32-true"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the Lightning checkpoint to ship (best by validation)")
    parser.add_argument("--weights", choices=sorted(DEMOS), default="umt_demo_synthetic",
                        help="which shipped weights the checkpoint becomes (default: %(default)s)")
    parser.add_argument("--stage", nargs="+", action="append", required=True, metavar="COMMAND LOGDIR",
                        help="a training command, then its CSV logger folder(s) in order; repeat per stage")
    parser.add_argument("--note", default="", help="anything a reader must know (e.g. a kill and --ckpt_path resume)")
    args = parser.parse_args(argv)

    import lightning
    import torch
    import yaml

    name, demo = args.weights, DEMOS[args.weights]
    file = pretrained_cfg(demo.preset).builtin_weights[name]
    out = export_weights(args.checkpoint, WEIGHTS_DIR / file, demo.preset)
    config = yaml.safe_load((ROOT / "configs" / demo.config).read_text())
    stages = []
    for command, *logs in args.stage:
        if not logs:
            parser.error(f"--stage {command!r}: give its CSV logger folder(s) after the command")
        folders = [Path(p) for p in logs]
        stages.append({"command": command, "validation": validation_history(folders, demo.metrics),
                       "wall_minutes": {f"{f.parent.name}/{f.name}": wall_minutes(f) for f in folders}})
    provenance = {
        "weights": file,
        "preset": demo.preset,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "bytes": out.stat().st_size,
        "dtype": f"float16 (trained in {precision(args.stage[0][0], config)}, exported from the fp32 weights)",
        "command": " && ".join(stage["command"] for stage in stages),
        "note": args.note,
        "seed": {"seed_everything": config["seed_everything"], "model.seed": config["model"]["init_args"]["seed"],
                 "data.seed": config["data"]["init_args"]["seed"]},
        "checkpoint": args.checkpoint.name,
        "stages": stages,
        "training_clips": config["data"]["init_args"]["num_train"],
        "validation_clips": config["data"]["init_args"]["num_val"],
        "machine": machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__},
        "date": dt.date.today().isoformat(),
    }
    (WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {name}.json; "
          f"last validation: {stages[-1]['validation'][-1] if stages[-1]['validation'] else None}")


if __name__ == "__main__":
    main()
