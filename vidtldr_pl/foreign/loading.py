"""Foreign models by name: ``create_model("hf:<dir or hub id>")``, ``"timm:<name>"``, ``"open_clip:<name>"``.

- ``hf:<dir>``: a ``save_pretrained`` directory (config.json + weights); the class is the architecture config.json
  names (``architectures[0]``, else ``AutoModel``). ``hf:<org>/<name>`` that is not a local directory is a hub id:
  what the Hugging Face cache holds, or a download for a user with a network. Weights the directory lacks are refused
  (strict) instead of left random.
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, **overrides)``; ``checkpoint=`` a .safetensors /
  .pth state dict (read safely: safetensors or ``weights_only``), loaded strictly.
- ``open_clip:<name>``: ``open_clip.create_model(name, pretrained=None, **overrides)`` (open_clip's own schemas
  ``local-dir:`` / ``hf-hub:`` pass through); ``checkpoint=`` as for timm.

overrides go to the library's constructor (``attn_implementation="eager"`` for transformers, ``img_size`` /
``num_classes`` for timm, ``force_image_size`` / ``vision_cfg`` for open_clip). The model comes back wrapped for the
tasks (``vidtldr_pl.foreign.wrappers.wrap``) with its encoders grafted (``adapt``), merging off. Every failure a user
can cause is one line (a ``UserError``): the library missing, the directory missing, a bad config, an unknown name.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..catalog import FOREIGN_PREFIXES as PREFIXES
from ..errors import CheckpointError, UserError


class ForeignLibraryMissingError(UserError, ImportError):
    """The library a prefix needs is not installed."""


class ForeignModelNotFoundError(UserError, FileNotFoundError):
    """An ``hf:`` directory that is not there (or a hub id neither cached nor reachable)."""


class ForeignConfigError(UserError, ValueError):
    """A model name or config the library cannot build (unknown name, unreadable config.json, ...)."""


def is_foreign_name(name: object) -> bool:
    """Whether ``name`` is an ``hf:`` / ``timm:`` / ``open_clip:`` model name."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def _import(module: str, prefix: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ForeignLibraryMissingError(f"{prefix} models need {module.split('.')[0]}, which is not installed "
                                         f"({err}): pip install {module.split('.')[0].replace('_', '-')}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# ------------------------------------------------------------------------------------------------ transformers
def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") != 1 or Path(spec).expanduser().exists()


def load_hf(spec: str, strict: bool = True, **overrides: Any) -> nn.Module:
    """A transformers model from a ``save_pretrained`` directory or a hub id (see the module docstring)."""
    transformers = _import("transformers", "hf:")
    name = f"hf:{spec}"
    if not spec:
        raise ForeignConfigError("hf: needs a directory or a hub id, e.g. hf:/path/to/saved_model or hf:org/name")
    local = Path(spec).expanduser()
    hub = not _looks_like_path(spec)
    if not hub:
        if not local.is_dir():
            raise ForeignModelNotFoundError(f"{name}: no such directory (a transformers save_pretrained folder with "
                                            "config.json and the weights)")
        if not (local / "config.json").is_file():
            raise ForeignConfigError(f"{name}: the directory has no config.json (write it with model.save_pretrained)")
        source = str(local)
    else:
        source = spec  # a hub id: the Hugging Face cache, or the hub for a user with a network
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except OSError as err:
        if hub:
            raise ForeignModelNotFoundError(f"{name}: not a local directory, and not in the Hugging Face cache or "
                                            f"reachable on the hub ({_first_line(err)})") from None
        raise ForeignConfigError(f"{name}: config.json cannot be read: {_first_line(err)}") from None
    except (ValueError, KeyError) as err:
        raise ForeignConfigError(f"{name}: config.json cannot be read: {_first_line(err)}") from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the evaluation's output
    try:
        model, info = cls.from_pretrained(source, output_loading_info=True, **overrides)
    except OSError as err:
        raise ForeignModelNotFoundError(f"{name}: {_first_line(err)}") from None
    except (ValueError, TypeError) as err:
        raise ForeignConfigError(f"{name}: {cls.__name__}.from_pretrained failed: {_first_line(err)}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if strict and (missing or mismatched):
        bad = missing + [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        raise CheckpointError(f"{name}: the directory's weights do not fill {cls.__name__}: {len(bad)} tensors would "
                              f"stay random (e.g. {', '.join(sorted(bad)[:5])}); pass strict=False to accept that")
    return model


# ------------------------------------------------------------------------------------------------ timm
def load_timm(spec: str, **overrides: Any) -> nn.Module:
    """``timm.create_model(spec, pretrained=False, **overrides)`` (an unknown name: one line with close names)."""
    timm = _import("timm", "timm:")
    try:
        return timm.create_model(spec, pretrained=False, **overrides)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        raise ForeignConfigError(f"timm:{spec}: unknown timm model{_did_you_mean(spec, timm.list_models())}") from None
    except TypeError as err:
        raise ForeignConfigError(f"timm:{spec}: {_first_line(err)}") from None


# ------------------------------------------------------------------------------------------------ open_clip
def load_open_clip(spec: str, **overrides: Any) -> nn.Module:
    """``open_clip.create_model(spec, pretrained=None, **overrides)`` (an unknown name: one line with close names)."""
    open_clip = _import("open_clip", "open_clip:")
    try:
        return open_clip.create_model(spec, pretrained=None, **overrides)
    except FileNotFoundError as err:
        raise ForeignModelNotFoundError(f"open_clip:{spec}: {_first_line(err)}") from None
    except RuntimeError as err:
        if "not found" not in str(err):
            raise
        raise ForeignConfigError(f"open_clip:{spec}: unknown open_clip model"
                                 f"{_did_you_mean(spec, open_clip.list_models())}") from None
    except (TypeError, ValueError) as err:
        raise ForeignConfigError(f"open_clip:{spec}: {_first_line(err)}") from None


# ------------------------------------------------------------------------------------------------ checkpoint
def load_state_file(model: nn.Module, checkpoint: str, strict: bool = True) -> Any:
    """Read a .safetensors / .pth state dict safely (``{"state_dict" | "model" | "module": ...}`` unwrapped, a DDP
    ``module.`` prefix removed) into the library model; strict refuses missing / unexpected / mis-shaped keys (one
    CheckpointError naming them). Returns the ``LoadReport``."""
    from ..backbones.checkpoint import load_state_into, read_state_dict, strip_prefix

    state = strip_prefix(read_state_dict(checkpoint), "module.")
    return load_state_into(model, state, path=checkpoint, strict=strict)


_LOADERS: dict[str, Callable[..., nn.Module]] = {"timm:": load_timm, "open_clip:": load_open_clip}


def load_foreign(name: str, checkpoint: str | None = None, strict: bool = True, **overrides: Any) -> nn.Module:
    """``hf:`` / ``timm:`` / ``open_clip:`` name -> the library model, weights loaded, wrapped for the tasks and
    grafted (merging off). checkpoint: a state dict file of the library model's keys; strict: refuse one that does
    not fit exactly (and, for ``hf:``, a directory whose weights leave tensors random)."""
    prefix = next(p for p in PREFIXES if name.startswith(p))
    spec = name[len(prefix):]
    if prefix == "hf:":
        model = load_hf(spec, strict=strict, **overrides)
    else:
        model = _LOADERS[prefix](spec, **overrides)
    report = load_state_file(model, checkpoint, strict) if checkpoint is not None else None
    from .wrappers import wrap

    wrapped = wrap(model, source=name)
    if report is not None:
        wrapped.load_report = report
    return wrapped


__all__ = ["ForeignConfigError", "ForeignLibraryMissingError", "ForeignModelNotFoundError", "PREFIXES",
           "is_foreign_name", "load_foreign", "load_hf", "load_open_clip", "load_state_file", "load_timm"]
