"""VideoMAE's fine-tuning optimizer pieces (``optim_factory.py``, ``utils.cosine_scheduler``): layer-wise lr decay
parameter groups and the per-step warm-up + cosine multipliers (UMT's and VideoMAE's).

Layer ids over a ViT of depth L: the patch embedding and everything before the blocks (CLS, positions) 0, block i
i + 1, the final norm and everything outside the encoder (pooling norm, head) L + 1; a parameter of layer k learns at
``lr * layer_decay ** (L + 1 - k)``. No weight decay on 1-D parameters, biases, ``pos_embed`` and ``cls_token``.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token")


def layer_id(name: str, encoder_prefix: str, depth: int) -> int:
    """The layer id of parameter ``name`` (a name in the module that holds the encoder at ``encoder_prefix``)."""
    prefix = f"{encoder_prefix}." if encoder_prefix else ""
    if not name.startswith(prefix):
        return depth + 1
    rest = name[len(prefix):]
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    if rest.startswith("norm."):
        return depth + 1
    return 0


def layer_decay_groups(module: nn.Module, encoder: nn.Module, weight_decay: float,
                       layer_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``'s trainable parameters, one per (layer, decay / no decay), in the order
    the parameters first appear. Each group has ``lr_scale`` (multiply the base lr by it) and ``weight_decay``."""
    encoder_prefix = next((n for n, m in module.named_modules() if m is encoder), None)
    if encoder_prefix is None:
        raise ValueError("layer_decay_groups: the encoder is not a submodule of the module")
    depth = len(encoder.blocks)
    # a block's parameters by membership, whatever the family calls its blocks (ours "blocks.i", transformers
    # "encoder.layer.i"); the rest by name
    block_of = {id(p): i + 1 for i, block in enumerate(encoder.blocks) for p in block.parameters()}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        lid = block_of.get(id(p)) or layer_id(name, encoder_prefix, depth)
        group = groups.setdefault((lid, no_decay), {
            "params": [], "names": [], "layer_id": lid, "lr_scale": layer_decay ** (depth + 1 - lid),
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier of the official UMT scheduler: linear warm-up from 0, then cosine down to ``min_lr_ratio``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(min_lr_ratio, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def warmup_cosine_floor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """VideoMAE's ``cosine_scheduler`` as a multiplier of the base lr: ``linspace(0, 1, warmup_steps)`` over the
    warm-up, then ``min + (1 - min) * (1 + cos(pi * i / n)) / 2`` over the ``n`` remaining steps (held at ``min``
    after them)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps - 1)
    n = max(1, total_steps - warmup_steps)
    i = min(step - warmup_steps, n)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * i / n))


__all__ = ["layer_decay_groups", "layer_id", "warmup_cosine_floor"]
