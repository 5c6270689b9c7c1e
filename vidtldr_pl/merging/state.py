"""Per-forward token bookkeeping, passed explicitly through the blocks of one encoder forward."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class AttentionInfo:
    """What a block's attention exposes to a merge method.

    probs: (B, H, N, N) softmax of the logits WITHOUT the proportional-attention bias (explicit mode only).
    q: (B, H, N, d) queries already multiplied by the attention scale; k: (B, H, N, d) keys.
    A fused attention provides q and k only; saliency is then computed without the N x N map.
    """

    probs: Tensor | None = None
    q: Tensor | None = None
    k: Tensor | None = None


@dataclass(frozen=True)
class TokenGrid:
    """How the current tokens tile a video, for methods that merge within a frame or across frames.

    frames: temporal positions T (tubelets); per_frame: tokens of each frame after the prefix (S); prefix:
    leading tokens (CLS) ahead of the grid; framewise: the batch rows are frames (an image encoder run per frame:
    rows (B x T, prefix + S), frame-major) instead of videos (rows (B, prefix + T x S), frame-major).
    """

    frames: int
    per_frame: int
    prefix: int = 0
    framewise: bool = False

    def tokens(self) -> int:
        """Tokens per batch row: prefix + S (framewise) or prefix + T x S."""
        return self.prefix + self.per_frame * (1 if self.framewise else self.frames)


@dataclass
class MergeState:
    """Token sizes and sources of one forward pass.

    size: (B, N, 1) float32 number of input patches each token stands for (fractional under vid-TLDR); None
        until the first merge. source: (B, N, N0) which of the N0 tokens entering the first merging layer each
        token holds (only when ``trace_source``). tokens_per_layer: token count after each block.
    record_shift: the blocks record ``shift`` (set when the method asks for it; no cost otherwise).
    shift: (B, N, 1) float32 representation shift of the current tokens: the L2 distance the last MLP sublayer
        moved each token (``representation_shift``); None before the first MLP and right after a merge.
    grid: the TokenGrid of the current tokens, set by the encoder before the first block; a method that keeps
        the grid (the same count merged in every frame) updates it, one that does not sets it to None.
    count: (B,) int64 real tokens per row when rows hold different numbers of tokens (content-adaptive
        budgets); row b's tokens count[b]: are padding (size 0), always at the end of the row. None: every token
        of every row is real.
    """

    trace_source: bool = False
    proportional_attention: bool = True
    size: Tensor | None = None
    source: Tensor | None = None
    tokens_per_layer: list[int] = field(default_factory=list)
    record_shift: bool = False
    shift: Tensor | None = None
    grid: TokenGrid | None = None
    count: Tensor | None = None

    def attention_bias(self) -> Tensor | None:
        """log(size) as a per-key additive bias (B, 1, 1, N), or None when no merge happened yet; padding keys
        (``count``) get -inf whether or not the attention is proportional."""
        pad = self.padding_mask()
        if self.size is None or not self.proportional_attention:
            if pad is None:
                return None
            return torch.zeros(pad.shape, device=pad.device).masked_fill(pad, float("-inf"))[:, None, None, :]
        bias = self.size.log()[:, None, None, :, 0]
        return bias if pad is None else bias.masked_fill(pad[:, None, None, :], float("-inf"))

    def padding_mask(self) -> Tensor | None:
        """(B, N) True at padding tokens (position >= count[b]), or None without ``count``; N from size."""
        if self.count is None:
            return None
        n = self.size.shape[1] if self.size is not None else int(self.count.max())
        return torch.arange(n, device=self.count.device)[None, :] >= self.count[:, None]

    def init_source(self, x: Tensor) -> None:
        """Start source tracing at the current tokens: identity (B, N, N) in float32."""
        if self.trace_source and self.source is None:
            b, n, _ = x.shape
            self.source = torch.eye(n, dtype=torch.float32, device=x.device)[None].expand(b, n, n)
