"""GFLOPs per video of a model's (first) mergeable encoder under a merge setting, counted on a meta-device copy
(the model's own merge setting is untouched), cached per (method, options, schedule)."""
from __future__ import annotations

import copy
import json

import torch
from torch import nn

from ..flops import encoder_flops
from ..merging import MergeSetting, apply_merge, find_mergeable


class FlopsCost:
    """cost(method, schedule, method_options=None) -> GFLOPs per video of ``model``'s first mergeable encoder.
    ``calls``: counts actually made (cache misses)."""

    def __init__(self, model: nn.Module) -> None:
        encoders = find_mergeable(model)
        if not encoders:
            raise ValueError(f"{type(model).__name__} has no mergeable encoder")
        self.encoder = encoders[0]
        self.depth = len(self.encoder.blocks)
        self.num_tokens = int(self.encoder.num_tokens)
        self.cache: dict[str, float] = {}
        self.calls = 0

    def __call__(self, method: str, schedule: list[int] | None, method_options: dict | None = None) -> float:
        key = json.dumps([method, list(schedule or []), method_options or {}], sort_keys=True)
        if key not in self.cache:
            with torch.device("meta"):
                probe = type(self.encoder)(copy.deepcopy(self.encoder.cfg))
            mode = getattr(getattr(self.encoder.blocks[0], "attn", None), "mode", None)
            if mode is not None and hasattr(probe, "set_attention"):
                probe.set_attention(mode)
            apply_merge(probe, MergeSetting(method=method, r=list(schedule) if schedule else None,
                                            method_options=method_options))
            self.cache[key] = encoder_flops(probe).gflops
            self.calls += 1
        return self.cache[key]


__all__ = ["FlopsCost"]
