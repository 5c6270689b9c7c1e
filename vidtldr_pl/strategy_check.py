"""Refuse a trainer setting that cannot run on this machine before any model or data is built: DeepSpeed without
CUDA (or without the deepspeed package), a GPU accelerator without a GPU. One ``error:`` line and exit code 2
instead of Lightning's traceback after the model and the data were made."""
from __future__ import annotations

import importlib.util
import sys
from typing import Any

GPU_HINT = "on a CPU use --config strategies/ddp.yaml --trainer.accelerator=cpu --trainer.devices=N"


def _get(ns: Any, key: str) -> Any:
    return ns.get(key) if hasattr(ns, "get") else getattr(ns, key, None)


def _name(value: Any) -> str:
    """A strategy / accelerator as given: a registry name, or the class_path of a class_path + init_args entry."""
    if value is None or isinstance(value, str):
        return value or ""
    class_path = _get(value, "class_path")
    return str(class_path) if class_path is not None else type(value).__name__


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def strategy_problem(trainer: Any, cuda: bool | None = None, mps: bool | None = None,
                     deepspeed_installed: bool | None = None) -> str | None:
    """Why the parsed ``trainer`` config (accelerator, strategy) cannot run here, in one line; None when it can.
    ``cuda`` / ``mps`` / ``deepspeed_installed``: what this machine has (detected when None)."""
    if trainer is None:
        return None
    strategy, accelerator = _name(_get(trainer, "strategy")), _name(_get(trainer, "accelerator")).lower()
    cuda = _cuda_available() if cuda is None else cuda
    if "deepspeed" in strategy.lower():
        if not cuda:
            return (f"the DeepSpeed strategy ({strategy}) needs a CUDA GPU and this machine has none "
                    f"(torch.cuda.is_available() is False); {GPU_HINT}")
        if accelerator not in ("", "auto", "gpu", "cuda"):
            return (f"the DeepSpeed strategy ({strategy}) runs on CUDA GPUs only, not with "
                    f"trainer.accelerator={accelerator}; use --trainer.accelerator=gpu")
        installed = importlib.util.find_spec("deepspeed") is not None if deepspeed_installed is None \
            else deepspeed_installed
        if not installed:
            return f"the DeepSpeed strategy ({strategy}) needs the deepspeed package: pip install -e '.[deepspeed]'"
    if accelerator in ("gpu", "cuda") and not cuda and not (accelerator == "gpu" and (
            _mps_available() if mps is None else mps)):
        return (f"trainer.accelerator is {accelerator} but this machine has no GPU (torch.cuda.is_available() is "
                f"False); {GPU_HINT}")
    return None


def exit_on_unusable_strategy(trainer: Any) -> None:
    """``strategy_problem`` as a usage error: one ``error:`` line on stderr and SystemExit(2)."""
    reason = strategy_problem(trainer)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        raise SystemExit(2)
