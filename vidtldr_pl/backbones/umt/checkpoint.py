"""Loading official UMT checkpoints (fine-tuned and pretraining layouts), safely and strictly.

Files are read with ``torch.load(weights_only=True)`` or safetensors. A wrong file never leaves random weights
behind silently: missing, unexpected and mis-shaped keys are reported together in a CheckpointError.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

# Keys of pretraining checkpoints that a retrieval model has no use for (MLM head, CLIP distillation decoders,
# the frozen CLIP teacher); they are dropped and reported, never silently loaded.
IGNORED_PREFIXES = ("text_encoder.cls.", "vision_encoder.clip_decoder.", "clip_teacher.")
CONTAINER_KEYS = ("model", "state_dict", "module")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded into the model (says which file and which keys)."""


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    renamed_bert: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        def head(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [f"checkpoint {self.path}: {self.loaded} tensors match"]
        if self.missing:
            lines.append(f"  missing in the file ({len(self.missing)}): {head(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in the file ({len(self.unexpected)}): {head(self.unexpected)}")
        if self.mismatched:
            items = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"  wrong shape ({len(items)}): {head(items)}")
        if self.ignored:
            lines.append(f"  ignored pretraining-only keys: {len(self.ignored)}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a torch file (weights_only); unwraps {"model": ...} containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: {str(err).splitlines()[0][:200]}") from err
        raise CheckpointError(
            f"{path} holds Python objects that a safe load refuses ({_unsupported_global(err)}). If you trust the "
            "file, convert it once: python -m vidtldr_pl.backbones.umt.checkpoint convert --trust IN OUT.safetensors"
        ) from err
    except Exception as err:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {type(err).__name__}: {err}") from err
    return _unwrap(obj, path)


def _unsupported_global(err: Exception) -> str:
    for line in str(err).splitlines():
        if "global" in line:
            return line.strip()[:200]
    return str(err).splitlines()[0][:200]


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    for key in CONTAINER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} is not a state dict: {len(bad)} entries are not str -> Tensor (e.g. {bad[:5]}); "
            f"top-level keys: {list(obj)[:10]}"
        )
    return dict(obj)


def to_retrieval_layout(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str], bool]:
    """Official key conversion: strip a DDP "module." prefix; in pretraining checkpoints (text_encoder.bert.*)
    delete "bert." from every key containing "bert" (as the official loader does); drop IGNORED_PREFIXES.
    Returns (state, ignored keys, whether the bert rename was applied)."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    renamed = any(k.startswith("text_encoder.bert.") for k in state)
    if renamed:
        state = {(k.replace("bert.", "") if "bert" in k else k): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}, ignored, renamed


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], path: str = "<state dict>", strict: bool = True) -> LoadReport:
    """Copy matching tensors into model. strict: raise CheckpointError unless keys and shapes match exactly."""
    own = model.state_dict()
    report = LoadReport(path=str(path))
    report.missing = sorted(k for k in own if k not in state)
    report.unexpected = sorted(k for k in state if k not in own)
    report.mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape]
    if strict and not report.ok:
        raise CheckpointError("refusing to load a checkpoint that does not fit the model\n" + report.describe())
    bad = {k for k, _, _ in report.mismatched}
    loadable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(loadable, strict=False)
    report.loaded = len(loadable)
    return report


def load_umt_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an official UMT checkpoint (fine-tuned or pretraining layout; .pth or .safetensors) into a UMT model
    or, for vision-only files or models, into a VisionTransformer (``vision_encoder.`` prefix handled)."""
    state, ignored, renamed = to_retrieval_layout(read_state_dict(path))
    from .vision import VisionTransformer

    if isinstance(model, VisionTransformer):
        if any(k.startswith("vision_encoder.") for k in state):
            state = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    report = load_state_into(model, state, str(path), strict)
    report.ignored, report.renamed_bert = ignored, renamed
    return report


def convert(src: str, dst: str, trust: bool = False) -> None:
    """Rewrite a checkpoint as safetensors in the retrieval layout. ``trust`` allows full unpickling of src."""
    from safetensors.torch import save_file

    if trust:
        obj = torch.load(src, map_location="cpu", weights_only=False)  # explicitly requested by the user
        state = _unwrap(obj, Path(src))
    else:
        state = read_state_dict(src)
    state, ignored, _ = to_retrieval_layout(state)
    save_file({k: v.contiguous() for k, v in state.items()}, dst)
    print(f"wrote {len(state)} tensors to {dst} ({len(ignored)} pretraining-only keys dropped)")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Convert an official UMT checkpoint to safetensors.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--trust", action="store_true", help="unpickle arbitrary objects in SRC (only for files you trust)")
    args = parser.parse_args(argv)
    convert(args.src, args.dst, args.trust)


if __name__ == "__main__":
    main()
