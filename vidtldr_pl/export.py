"""Turn a training checkpoint into one weights file in the official UMT key layout, which evaluate.py loads with
``--model.init_args.checkpoint=OUT``.

    python -m vidtldr_pl.export outputs/.../last.ckpt weights.safetensors [--dtype float16]
    python -m vidtldr_pl.export outputs/.../last.ckpt/ weights.pth          # a DeepSpeed ZeRO-2/3 sharded folder
    python -m vidtldr_pl.export 'outputs/demo_umt/lightning_logs/version_*/checkpoints/best-*.ckpt' w.safetensors

Several sources (a glob, quoted or expanded by the shell): the newest by modification time is exported, and named.

Input: a Lightning checkpoint file (its ``state_dict`` holds ``model.*`` = the UMT), or a DeepSpeed checkpoint
folder (consolidated first with DeepSpeed's zero_to_fp32, through Lightning). Output: ``.safetensors`` (with the
preset name in its metadata) or ``.pth`` (``{"model": state_dict}``, the official fine-tuned layout).
"""
from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .backbones.checkpoint import read_state_dict
from .errors import CheckpointError

PREFIX = "model."


def consolidate_deepspeed(folder: str | Path, out_file: str | Path) -> Path:
    """DeepSpeed sharded checkpoint folder -> one fp32 Lightning checkpoint file (needs the deepspeed package)."""
    if not (Path(folder) / "latest").is_file():
        raise CheckpointError(f"{folder} is a folder but not a DeepSpeed checkpoint (no 'latest' file naming its "
                              "tag folder); give a Lightning .ckpt file or the .ckpt/ folder DeepSpeed wrote")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:  # Lightning's converter only raises ModuleNotFoundError then
        raise CheckpointError(f"{folder} is a DeepSpeed checkpoint folder; consolidating it needs deepspeed "
                              "(pip install -e '.[deepspeed]')")
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    try:
        convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(out_file))
    except (OSError, ValueError) as err:  # missing tag folder or shard files
        raise CheckpointError(f"{folder} is not a complete DeepSpeed checkpoint: {err}") from err
    return Path(out_file)


def umt_state_from_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A Lightning checkpoint file or DeepSpeed folder -> the UMT state dict (``model.`` prefix removed)."""
    path = Path(path)
    if path.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            return umt_state_from_checkpoint(consolidate_deepspeed(path, Path(tmp) / "consolidated.ckpt"))
    state = read_state_dict(path)  # weights_only; unwraps "state_dict"
    if state and all(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    if "temp" in state and state["temp"].numel() == 1:  # DeepSpeed consolidates the (1,) parameter; official is 0-d
        state["temp"] = state["temp"].reshape(())
    if not any(k.startswith("vision_encoder.") for k in state):
        raise CheckpointError(f"{path}: no vision_encoder.* weights (is this a RetrievalTask checkpoint?)")
    return state


def export(src: str | Path, dst: str | Path, dtype: str | None = None, preset: str | None = None) -> Path:
    """Write the UMT weights of ``src`` to ``dst`` (.safetensors or .pth); ``dtype`` casts floating tensors."""
    state = umt_state_from_checkpoint(src)
    if dtype is not None:
        target = getattr(torch, dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        seen: set[int] = set()
        tensors = {}
        for k, v in state.items():  # tied weights (UMT-QA's LM head = word embeddings): one copy per key
            v = v.contiguous()
            tensors[k] = v.clone() if v.data_ptr() in seen else v
            seen.add(v.data_ptr())
        save_file(tensors, str(dst),
                  metadata={"format": "pt", "layout": "umt_retrieval", "preset": preset or "", "source": Path(src).name})
    else:
        torch.save({"model": state}, dst)
    return dst


OUTPUT_SUFFIXES = (".safetensors", ".pth")


def pick_source(patterns: list[str]) -> tuple[Path, int]:
    """The checkpoint to export among paths / glob patterns: the newest by modification time. Returns it and how
    many candidates there were; CheckpointError when nothing matches."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for match in matches:
            path = Path(match)
            if path.exists():
                found.setdefault(str(path.resolve()), path)
    if not found:
        listed = ", ".join(patterns)
        if any(glob.has_magic(p) for p in patterns):
            raise CheckpointError(f"no checkpoint matches {listed} (train.py prints where it wrote its checkpoints)")
        raise CheckpointError(f"checkpoint not found: {listed}")
    newest = max(found.values(), key=lambda p: p.stat().st_mtime)
    return newest, len(found)


def main(argv: list[str] | None = None) -> int:
    """The command line; a bad source or destination: one ``error:`` line, exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="+", help="Lightning .ckpt file or DeepSpeed checkpoint folder; a glob or "
                                               "several paths: the newest (modification time) is exported")
    parser.add_argument("dst", help="output .safetensors or .pth")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    parser.add_argument("--preset", default=None, help="UMT preset recorded in the safetensors metadata")
    args = parser.parse_args(argv)
    if Path(args.dst).suffix not in OUTPUT_SUFFIXES:  # also guards a shell glob that swallowed the destination
        print(f"error: the output must end in .safetensors or .pth, got {args.dst}", file=sys.stderr)
        return 2
    try:
        src, count = pick_source(args.src)
        if count > 1:
            print(f"{count} checkpoints match; exporting the newest: {src}")
        out = export(src, args.dst, args.dtype, args.preset)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unreadable source or an unwritable destination
        print(f"error: {err.filename or args.dst}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
