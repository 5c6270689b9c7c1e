"""Lightning callback that inserts token merging into the wrapped backbone at setup (and removes it at teardown).

YAML (LightningCLI):
    trainer:
      callbacks:
        - class_path: vidtldr_pl.callbacks.TokenMerging
          init_args: {method: vidtldr, r: [600, 200, 100]}
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..merging import MergeSetting, apply_merge, find_mergeable, unpatch

log = logging.getLogger(__name__)


class TokenMerging(Callback):
    """Patch the LightningModule's backbone with one MergeSetting (``self.setting``, through ``apply_merge``).

    Args:
        method: any name in ``merging.METHODS`` (docs/methods.md) or "none".
        r: per-block list (e.g. [600, 200, 100]), or one count / fraction applied at ``layers``.
        layers: block indices for a single r (None: every block, as ToMe).
        trace_source: keep which input patches each token holds (for visualisation; costs memory).
        attention: "fused" (default, SDPA, no N x N map), "explicit" (the official reference path) or "flex"
            (FlexAttention); None keeps what the backbone has.
        method_options: extra keyword arguments of the method (e.g. {"metric": "hidden"} for ToMe,
            {"saliency_backend": "chunked"} for vid-TLDR). CLS tokens are protected by the backbone itself.
        target: attribute path of the module to patch (e.g. "model.vision_encoder"); default: the whole
            LightningModule (every mergeable encoder in it).
        name: a label for results tables (default: the method).
        batching: "pad" or "pack": how rows of different token counts (threshold mode, RLT) share a batch.

    ``TokenMerging(**vars(setting), target=...)`` builds the callback of a MergeSetting.
    """

    def __init__(
        self,
        method: str = "vidtldr",
        r: list[int | float] | int | float | str | None = None,
        layers: list[int] | None = None,
        trace_source: bool = False,
        attention: str | None = "fused",
        method_options: dict | None = None,
        target: str | None = None,
        name: str | None = None,
        batching: str = "pad",
    ) -> None:
        super().__init__()
        self.setting = MergeSetting(method=method, r=r, layers=layers, attention=attention,
                                    method_options=method_options, trace_source=trace_source, name=name,
                                    batching=batching).check()
        self.target = target

    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        module: nn.Module = pl_module
        for name in (self.target or "").split("."):
            if name:
                if not hasattr(module, name):
                    raise AttributeError(f"TokenMerging target {self.target!r}: {type(module).__name__} has no {name!r}")
                module = getattr(module, name)
        return module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = self._target(pl_module)
        counts = apply_merge(module, self.setting)
        if self.setting.merges:
            for encoder, tokens in zip(find_mergeable(module), counts):
                if tokens:
                    log.info("token merging %s on %s: tokens per block %s", self.setting.method, type(encoder).__name__,
                             tokens)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        unpatch(self._target(pl_module))
