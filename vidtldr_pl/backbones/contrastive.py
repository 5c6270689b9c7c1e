"""The CLIP-style contrastive head shared by every dual encoder with a learned ``logit_scale`` (ViFi-CLIP, and the
transformers / open_clip CLIP models ``vidtldr_pl.foreign`` wraps): normalised embeddings and the temperature."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LogitScaleHead(nn.Module):
    """Mixin of a DualEncoder whose encoders already project (``encode_vision``'s pooled and ``encode_text``'s
    output are (B, E)) and whose temperature is ``1 / exp(logit_scale)``; the class defines ``logit_scale``."""

    logit_scale: Tensor

    def vision_embed(self, pooled: Tensor) -> Tensor:
        """(B, E) -> L2-normalised (B, E)."""
        return F.normalize(pooled, dim=-1)

    def text_embed(self, text_hidden: Tensor) -> Tensor:
        """``encode_text``'s (B, E) -> L2-normalised (B, E)."""
        return F.normalize(text_hidden, dim=-1)

    def temperature(self, clamp: bool = False) -> Tensor:
        """1 / exp(logit_scale) (0-d); clamp: first ``logit_scale`` into [0, log(100)] in place (CLIP's recipe)."""
        if clamp:
            with torch.no_grad():
                self.logit_scale.clamp_(0.0, math.log(100.0))
        return self.logit_scale.exp().reciprocal()


__all__ = ["LogitScaleHead"]
