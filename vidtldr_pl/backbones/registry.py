"""The model registry (timm's pattern): ``create_model(name, checkpoint=None, **overrides)`` and ``list_models()``.

A family file registers each preset with one decorated function named as the model, next to the family's model::

    @register_model(loader=load_umt_checkpoint, num_frames=12, img_size=224, task="retrieval", description="...")
    def umt_b16(**overrides) -> UMT:
        return UMT(UMTConfig(VisionConfig.vit_b16(**overrides), ...))

The decorator's keywords are the preset's ``PretrainedCfg``; the function receives the config overrides (fields
such as ``num_frames=8`` or ``attention="explicit"``), with ``num_frames`` and ``img_size`` defaulting to the
pretrained_cfg's, and returns an ``nn.Module`` with at least one mergeable encoder. This module imports no family:
``vidtldr_pl.backbones`` (the package ``__init__``) imports them, which registers their presets.
"""
from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..catalog import FOREIGN_PREFIXES
from ..errors import CheckpointError, UnknownWeightsError
from .checkpoint import LoadReport

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


def register_model(fn: Builder | None = None, *, name: str | None = None, loader: Loader | None = None,
                   **cfg: Any) -> Any:
    """Decorator, bare (``@register_model``) or with keywords: register ``fn(**overrides) -> nn.Module`` under
    ``name`` (default: the function's name); ``loader(model, path, strict)`` reads a checkpoint file into it;
    ``cfg``: PretrainedCfg fields. Returns the preset with ``num_frames`` / ``img_size`` defaulting to cfg's."""

    def wrap(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        pretrained = PretrainedCfg(**cfg)

        @functools.wraps(builder)
        def preset(**overrides: Any) -> nn.Module:
            return builder(**{"num_frames": pretrained.num_frames, "img_size": pretrained.img_size, **overrides})

        _REGISTRY[key] = ModelEntry(key, preset, loader, pretrained)
        return preset

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching a shell pattern (e.g. "videomae_*"), optionally of one task."""
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (task is None or e.cfg.task == task))


def model_entry(name: str) -> ModelEntry:
    """The registered preset ``name`` (ValueError listing the registered ones if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def pretrained_cfg(name: str) -> PretrainedCfg:
    return model_entry(name).cfg


def resolve_checkpoint(checkpoint: str) -> str:
    """``builtin:<weights>`` -> the file shipped in vidtldr_pl/weights (any registered model's); paths unchanged."""
    if not checkpoint.startswith("builtin:"):
        return checkpoint
    wanted = checkpoint.split(":", 1)[1]
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

    A name with a library prefix builds that library's model instead (``vidtldr_pl.foreign.loading``), wrapped for
    the tasks and ready to merge in place: ``hf:<save_pretrained dir or hub id>``, ``timm:<name>``,
    ``open_clip:<name>`` (overrides go to the library's constructor; ``list_models`` lists only the presets).
    """
    if name.startswith(FOREIGN_PREFIXES):
        from ..foreign.loading import load_foreign

        return load_foreign(name, checkpoint=checkpoint, strict=strict, **overrides)
    entry = model_entry(name)
    model = entry.builder(**overrides)
    if checkpoint is not None:
        if entry.loader is None:
            raise CheckpointError(f"model {name!r} has no checkpoint loader")
        report = entry.loader(model, resolve_checkpoint(checkpoint), strict)
        if report is not None:
            model.load_report = report
    return model


__all__ = ["WEIGHTS_DIR", "ModelEntry", "PretrainedCfg", "create_model", "list_models", "model_entry",
           "pretrained_cfg", "register_model", "resolve_checkpoint"]
