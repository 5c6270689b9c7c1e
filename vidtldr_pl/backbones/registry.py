"""The model registry (timm's pattern): ``create_model(name, checkpoint=None, **overrides)`` and ``list_models()``.

A backbone file registers each preset with ``@register_model``; the builder takes keyword overrides (config
fields such as ``num_frames=8`` or ``attention="explicit"``) and returns an ``nn.Module`` with at least one
mergeable encoder. ``pretrained_cfg`` says what input the preset expects and how its checkpoints load.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import CheckpointError, LoadReport
from ..errors import UnknownWeightsError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"

Builder = Callable[..., nn.Module]
Loader = Callable[[nn.Module, str, bool], LoadReport]


@dataclass
class PretrainedCfg:
    """What a preset expects and ships. num_frames / img_size: the default input; mean / std: pixel normalisation
    (0-1 scale); task: what the model does ("retrieval", "classification", ...); builtin_weights: files under
    vidtldr_pl/weights that ``checkpoint="builtin:<name>"`` resolves to; description: one line for ``list_models``."""

    num_frames: int = 8
    img_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    task: str = "retrieval"
    builtin_weights: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass
class ModelEntry:
    name: str
    builder: Builder
    loader: Loader | None
    cfg: PretrainedCfg


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, loader: Loader | None = None, **cfg: Any) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(**overrides) -> nn.Module`` under ``name``; ``loader(model, path, strict)``
    reads a checkpoint file into it; ``cfg``: PretrainedCfg fields."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, builder, loader, PretrainedCfg(**cfg))
        return builder

    return wrap


def _ensure_backbones() -> None:
    from . import umt, videomae, vificlip  # noqa: F401  (registration side effects)


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching a shell pattern (e.g. "videomae_*"), optionally of one task."""
    _ensure_backbones()
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (task is None or e.cfg.task == task))


def model_entry(name: str) -> ModelEntry:
    _ensure_backbones()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def pretrained_cfg(name: str) -> PretrainedCfg:
    return model_entry(name).cfg


def resolve_checkpoint(checkpoint: str, name: str | None = None) -> str:
    """``builtin:<weights>`` -> the file shipped in vidtldr_pl/weights (any registered model's); paths unchanged."""
    if not checkpoint.startswith("builtin:"):
        return checkpoint
    wanted = checkpoint.split(":", 1)[1]
    _ensure_backbones()
    shipped = {w: f for e in _REGISTRY.values() for w, f in e.cfg.builtin_weights.items()}
    if wanted not in shipped:
        raise UnknownWeightsError(f"unknown built-in weights {checkpoint!r}; choose one of "
                              f"{', '.join('builtin:' + k for k in sorted(shipped))}")
    return str(WEIGHTS_DIR / shipped[wanted])


def create_model(name: str, checkpoint: str | None = None, strict: bool = True, **overrides: Any) -> nn.Module:
    """Build a registered model, optionally loading a checkpoint file (or ``builtin:<weights>``).

    overrides: config fields of the preset (e.g. num_frames=8, attention="explicit", drop_path_rate=0.1).
    strict: refuse a file whose keys or shapes do not match exactly (CheckpointError naming them); False loads what
        fits, logs a warning naming what stays as initialised and records the loader's report (``LoadReport``:
        loaded, missing, unexpected, mismatched) as ``model.load_report``.
    """
    entry = model_entry(name)
    model = entry.builder(**overrides)
    if checkpoint is not None:
        if entry.loader is None:
            raise CheckpointError(f"model {name!r} has no checkpoint loader")
        report = entry.loader(model, resolve_checkpoint(checkpoint, name), strict)
        if report is not None:
            model.load_report = report
    return model


__all__ = ["ModelEntry", "PretrainedCfg", "create_model", "list_models", "model_entry", "pretrained_cfg",
           "register_model", "resolve_checkpoint"]
