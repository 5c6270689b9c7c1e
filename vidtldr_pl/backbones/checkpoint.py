"""Backbone-neutral checkpoint reading: safe loading (weights_only / safetensors), container unwrapping, prefix
stripping and a strict load report. Each backbone's converter maps its layouts onto these.

A wrong file never leaves random weights behind silently: missing, unexpected and mis-shaped keys are reported
together in a CheckpointError (strict) or logged and returned (strict=False).
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from ..errors import CheckpointError

log = logging.getLogger(__name__)

CONTAINER_KEYS = ("model", "state_dict", "module")


@dataclass
class LoadReport:
    path: str
    loaded: int = 0  # tensors copied (a strict refusal: tensors that would have matched by name and shape)
    total: int = 0  # tensors of the model
    layout: str = ""  # the layout recognised in the file, when a converter names one
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    renamed_bert: bool = False  # UMT pretraining layout: "bert." removed from the text keys
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        def head(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        of = f" of {self.total}" if self.total else ""
        layout = f" (layout: {self.layout})" if self.layout else ""
        lines = [f"checkpoint {self.path}: {self.loaded}{of} tensors match{layout}"]
        if self.missing:
            lines.append(f"  missing in the file ({len(self.missing)}): {head(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in the file ({len(self.unexpected)}): {head(self.unexpected)}")
        if self.mismatched:
            items = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"  wrong shape ({len(items)}): {head(items)}")
        if self.ignored:
            lines.append(f"  ignored keys the model has no use for: {len(self.ignored)} ({head(self.ignored)})")
        lines += [f"  {note}" for note in self.notes]
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
            "file, convert it once: python -m vidtldr_pl.backbones.checkpoint convert --trust IN OUT.safetensors"
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


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` from every key when ALL keys carry it (a DDP ``module.``, ...); else return state as is."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def select_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix`` with the prefix removed (e.g. "vision_encoder.")."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], path: str = "<state dict>", strict: bool = True,
                    report: LoadReport | None = None) -> LoadReport:
    """Copy matching tensors into model. strict: raise CheckpointError unless keys and shapes match exactly;
    otherwise load what fits, log the report as a warning and return it."""
    own = model.state_dict()
    report = report or LoadReport(path=str(path))
    report.missing = sorted(k for k in own if k not in state)
    report.unexpected = sorted(k for k in state if k not in own)
    report.mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape]
    bad = {k for k, _, _ in report.mismatched}
    loadable = {k: v for k, v in state.items() if k in own and k not in bad}
    report.loaded, report.total = len(loadable), len(own)
    if strict and not report.ok:
        raise CheckpointError("refusing to load a checkpoint that does not fit the model\n" + report.describe())
    model.load_state_dict(loadable, strict=False)
    if not report.ok:
        log.warning("non-strict load, these weights stay as initialised:\n%s", report.describe())
    return report


def convert(src: str, dst: str, trust: bool = False,
            layout: Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], str]] | None = None) -> None:
    """Rewrite a checkpoint's tensors as safetensors. ``trust`` allows full unpickling of src (only for files you
    trust); ``layout`` maps the state onto a backbone's layout and returns (state, a note for the summary line)."""
    from safetensors.torch import save_file

    if trust:
        obj = torch.load(src, map_location="cpu", weights_only=False)  # explicitly requested by the user
        state = _unwrap(obj, Path(src))
    else:
        state = read_state_dict(src)
    note = ""
    if layout is not None:
        state, note = layout(state)
    save_file({k: v.contiguous() for k, v in state.items()}, dst)
    print(f"wrote {len(state)} tensors to {dst}{note}")


def main(argv: list[str] | None = None, layout: Callable | None = None,
         description: str = "Extract a checkpoint's tensors into a safetensors file.") -> None:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--trust", action="store_true", help="unpickle arbitrary objects in SRC (only for files you trust)")
    args = parser.parse_args(argv)
    convert(args.src, args.dst, args.trust, layout)


if __name__ == "__main__":
    main()
