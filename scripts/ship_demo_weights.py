"""Turn a finished demo training run into the weights that ship with the project, with their provenance.

    python scripts/ship_demo_weights.py RUN/checkpoints/best-*.ckpt \
        --stage "python train.py --config configs/demo_umt.yaml --model.init_args.checkpoint=null ..." RUN1/logs \
        [--stage "python train.py --config configs/demo_umt.yaml --model.init_args.checkpoint=stage1.safetensors ..."
         RUN2/logs ...] [--note "..."]

Each ``--stage`` is one training command followed by its CSV logger folder(s) (several when the run was resumed).
Writes vidtldr_pl/weights/umt_demo_synthetic.safetensors (float16, official UMT key layout, via vidtldr_pl.export)
and umt_demo_synthetic.json: per stage the command, the validation metrics of every epoch read from the CSV logs and
the wall time of each log folder (hparams.yaml written -> last metrics line); the seeds, machine and versions.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.backbones.umt.model import BUILTIN_WEIGHTS, WEIGHTS_DIR  # noqa: E402
from vidtldr_pl.export import export  # noqa: E402

NAME = "umt_demo_synthetic"
METRICS = ("itm/img_r1", "itm/img_r5", "itm/txt_r1", "itm/r_mean", "itc/img_r1", "itc/txt_r1", "itc/r_mean")


def validation_history(log_dirs: list[Path]) -> list[dict[str, float]]:
    """Every validation row (epoch, step, METRICS) of the CSV logs, in order; a later folder (a resumed run)
    replaces the rows of the epochs it repeats."""
    rows: dict[int, dict[str, float]] = {}
    for folder in log_dirs:
        with open(folder / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row.get("itm/img_r1"):
                    rows[int(row["epoch"])] = {"epoch": int(row["epoch"]), "step": int(row["step"]),
                                               **{k: round(float(row[k]), 2) for k in METRICS}}
    return [rows[e] for e in sorted(rows)]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the Lightning checkpoint to ship (best by validation R@1)")
    parser.add_argument("--stage", nargs="+", action="append", required=True, metavar="COMMAND LOGDIR",
                        help="a training command, then its CSV logger folder(s) in order; repeat per stage")
    parser.add_argument("--note", default="", help="anything a reader must know (e.g. a kill and --ckpt_path resume)")
    args = parser.parse_args(argv)

    import lightning
    import torch
    import yaml

    file, preset = BUILTIN_WEIGHTS[NAME]
    out = export(args.checkpoint, WEIGHTS_DIR / file, dtype="float16", preset=preset)
    config = yaml.safe_load((ROOT / "configs" / "demo_umt.yaml").read_text())
    stages = []
    for command, *logs in args.stage:
        if not logs:
            parser.error(f"--stage {command!r}: give its CSV logger folder(s) after the command")
        folders = [Path(p) for p in logs]
        stages.append({"command": command, "validation": validation_history(folders),
                       "wall_minutes": {f"{f.parent.name}/{f.name}": wall_minutes(f) for f in folders}})
    provenance = {
        "weights": file,
        "preset": preset,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "bytes": out.stat().st_size,
        "dtype": "float16 (trained in bf16-mixed, exported from the fp32 weights)",
        "command": " && ".join(stage["command"] for stage in stages),
        "note": args.note,
        "seed": {"seed_everything": config["seed_everything"], "model.seed": config["model"]["init_args"]["seed"],
                 "data.seed": config["data"]["init_args"]["seed"]},
        "checkpoint": args.checkpoint.name,
        "stages": stages,
        "validation_clips": config["data"]["init_args"]["num_val"],
        "machine": machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__},
        "date": dt.date.today().isoformat(),
    }
    (WEIGHTS_DIR / f"{NAME}.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {NAME}.json; "
          f"last validation: {stages[-1]['validation'][-1] if stages[-1]['validation'] else None}")


if __name__ == "__main__":
    main()
