"""Per-forward token bookkeeping, passed explicitly through the blocks of one encoder forward."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ops.attention import PackedBias


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


BATCHING_MODES = ("pad", "pack")


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
        of every row is real. Rows are never wider than max(count) once a merge ran.
    batching: "pad" (rows padded at the end) or "pack" (``enter`` concatenates the rows into one row; attention is
        block-diagonal, ``ops.attention.PackedBias``). packed: the tokens are packed now: x is (1, sum(count), C),
        row b's tokens the b-th segment; size / shift are (1, sum(count), 1) then.
    count_history: (block index, count after that block) for every block that merged rows of different counts,
        first (-1, count before it); ``row_counts`` turns it into tokens per block per row.
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
    batching: str = "pad"
    packed: bool = False
    count_history: list[tuple[int, Tensor]] = field(default_factory=list)

    def attention_bias(self) -> Tensor | PackedBias | None:
        """log(size) as a per-key additive bias (B, 1, 1, N), or None when no merge happened yet; padding keys
        (``count``) get -inf whether or not the attention is proportional. Packed tokens: a ``PackedBias`` (the
        segment lengths and the (1, 1, 1, T) log-size bias or None): attention stays within each row's segment."""
        if self.packed:
            key_bias = None
            if self.size is not None and self.proportional_attention:
                key_bias = self.size.log()[:, None, None, :, 0]
            return PackedBias(self.count, key_bias)
        pad = self.padding_mask()
        if self.size is None or not self.proportional_attention:
            if pad is None:
                return None
            bias = torch.zeros(pad.shape, device=pad.device).masked_fill(pad, float("-inf"))[:, None, None, :]
        else:
            bias = self.size.log()[:, None, None, :, 0]
            if pad is None:
                return bias
            bias = bias.masked_fill(pad[:, None, None, :], float("-inf"))
        bias.key_padding = pad  # the explicit kernel leaves padding out of its unbiased probs (ops.attention)
        return bias

    def padding_mask(self) -> Tensor | None:
        """(B, N) True at padding tokens (position >= count[b]), or None without ``count``; N from size."""
        if self.count is None:
            return None
        n = self.size.shape[1] if self.size is not None else int(self.count.max())
        return torch.arange(n, device=self.count.device)[None, :] >= self.count[:, None]

    def refuse_padding(self, reader: str, remedy: str = "need batch size 1 here (evaluation: "
                       "--data.init_args.eval_batch_size=1)") -> None:
        """A ValueError when rows hold padding (per-video counts that differ within the batch) and ``reader``, the
        module about to read every token, has no mask for it; ``remedy`` ends the line."""
        pad = self.padding_mask()
        if pad is not None and bool(pad.any()):
            raise ValueError(f"{reader} reads every video token and has no mask for padding: per-video token counts "
                             f"(rlt, threshold mode) {remedy}")

    def init_source(self, x: Tensor) -> None:
        """Start source tracing at the current tokens: identity (B, N, N) in float32."""
        if self.trace_source and self.source is None:
            b, n, _ = x.shape
            self.source = torch.eye(n, dtype=torch.float32, device=x.device)[None].expand(b, n, n)

    # ------------------------------------------------------------------ rows of different token counts
    def real_mask(self, width: int | None = None) -> Tensor | None:
        """(B, width) True at real tokens of the padded rows (width: max(count) by default); None without count."""
        if self.count is None:
            return None
        width = int(self.count.max()) if width is None else width
        return torch.arange(width, device=self.count.device)[None, :] < self.count[:, None]

    def enter(self, x: Tensor) -> Tensor:
        """The tokens entering the first block: x (B, N, C) as the encoder embedded them (padded rows when
        ``count`` is set) -> packed (1, sum(count), C) when ``batching`` is "pack", else x unchanged."""
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"unknown batching {self.batching!r}; choose one of {BATCHING_MODES}")
        if self.batching != "pack" or self.packed:
            return x
        if self.trace_source:
            raise ValueError("batching 'pack' does not trace sources: use batching 'pad' with trace_source")
        if self.count is None:
            self.count = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        mask = self.real_mask(x.shape[1])
        if self.size is not None:
            self.size = self.size[mask][None]
        if self.shift is not None:
            self.shift = self.shift[mask][None]
        self.packed = True
        return x[mask][None]

    def leave(self, x: Tensor) -> Tensor:
        """The tokens after the last block as padded rows (B, max(count), C) (padding zero); x itself unless
        packed."""
        if not self.packed:
            return x
        x = self.unpack(x)
        self.size = None if self.size is None else self.unpack(self.size)
        self.shift = None if self.shift is None else self.unpack(self.shift)
        self.packed = False
        return x

    def unpack(self, t: Tensor) -> Tensor:
        """Packed t (1, T, C) -> padded rows (B, max(count), C), zero at padding."""
        mask = self.real_mask()
        out = t.new_zeros(mask.shape[0], mask.shape[1], t.shape[-1])
        out[mask] = t[0]
        return out

    def pack(self, t: Tensor) -> Tensor:
        """Padded rows t (B, W, C) -> packed (1, sum(count), C) (the real tokens of each row, row after row)."""
        return t[self.real_mask(t.shape[1])][None]

    def unpack_heads(self, t: Tensor) -> Tensor:
        """Packed per-head t (1, H, T, d) (queries / keys) -> padded rows (B, H, max(count), d)."""
        h, d = t.shape[1], t.shape[-1]
        return self.unpack(t[0].transpose(0, 1).flatten(1)[None]).unflatten(-1, (h, d)).transpose(1, 2)

    def mean_pool(self, tokens: Tensor, size_weighted: bool = False) -> Tensor:
        """The mean of each row's real tokens: tokens (B, N, C) -> (B, C); size_weighted: weighted by ``size``
        (when set). Without ``count`` the plain ``tokens.mean(dim=1)`` (or the size-weighted mean) as before."""
        if size_weighted and self.size is not None:
            size = self.size.to(tokens.dtype)  # padding has size 0
            return (tokens * size).sum(dim=1) / size.sum(dim=1)
        if self.count is None:
            return tokens.mean(dim=1)
        mask = self.real_mask(tokens.shape[1]).to(tokens.dtype)[..., None]
        return (tokens * mask).sum(dim=1) / self.count[:, None].to(tokens.dtype)

    def record_count(self, before: Tensor | None) -> None:
        """Note the count after the current block (``count_history``); ``before``: the count entering it (None:
        every row held the same number)."""
        if not self.count_history:
            self.count_history.append((len(self.tokens_per_layer), before))
        self.count_history.append((len(self.tokens_per_layer), self.count))

    def row_counts(self) -> Tensor | None:
        """(L, B) tokens of each row after each of the L blocks run so far, or None when every row always held
        the same number (``tokens_per_layer`` says it all)."""
        if not self.count_history:
            return None
        first, start = self.count_history[0]
        batch = self.count_history[1][1].shape[0]
        marks = dict(self.count_history[1:])
        rows, current = [], start
        for layer in range(len(self.tokens_per_layer)):
            if layer < first:
                current = start if start is not None else torch.full(
                    (batch,), self.tokens_per_layer[layer], dtype=torch.long, device=self.count.device)
            else:
                current = marks.get(layer, current)
            rows.append(current)
        return torch.stack(rows) if rows else torch.zeros(0, batch, dtype=torch.long)
