"""Token-reduction methods behind one small interface.

A method turns (x, attention info, r, state) into a plan: a MergePlan (merge r tokens into others) or a DropPlan
(drop r tokens); the shared arithmetic in ``matching`` applies it to the hidden states, the sizes and the sources.
Adding a method (pruning, random merge, ...) is one class.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from .matching import (
    MERGE_OPS, DropPlan, MergePlan, bipartite_soft_matching, drop_lowest, even_gather, keep_tokens, merge_mlerp,
    merge_tokens, merge_wavg,
)
from .saliency import check_saliency_backend, raw_saliency, sharpen, vidtldr_saliency
from .schedule import RValue, effective_r
from .rows import call_rows
from .state import AttentionInfo, MergeState, TokenGrid

POSITIONS = ("attn", "mlp")


def check_position(position: str) -> str:
    """position if it is one of POSITIONS, else a ValueError naming it."""
    if position not in POSITIONS:
        raise ValueError(f"unknown merge position {position!r}; choose one of {POSITIONS}")
    return position


def head_mean_keys(attn: AttentionInfo | None, who: str) -> Tensor:
    """The block's keys averaged over heads, (B, N, d): ToMe's matching metric; a ValueError naming ``who`` when the
    block exposed none."""
    if attn is None or attn.k is None:
        raise ValueError(f"{who} needs the block's keys in AttentionInfo")
    return attn.k.mean(dim=1)


def matching_metric(x: Tensor, attn: AttentionInfo | None, metric: str, who: str) -> Tensor:
    """What bipartite matching compares: x itself ("hidden", (B, N, C)) or the head-mean keys ("keys")."""
    return head_mean_keys(attn, who) if metric == "keys" else x


class MergeMethod(ABC):
    """Base class. Subclasses implement ``plan``; ``__call__`` applies it (x, size, source).

    needs_attention: the block must expose AttentionInfo (probs or q/k). needs_shift: the blocks record the
    representation shift in MergeState.shift (``shift.representation_shift``). position: where the block calls
    the method: "attn" (after the attention residual, before the MLP: ToMe, vid-TLDR) or "mlp" (after the MLP
    residual). proportional_attention: later blocks add log(size) to their attention logits. protected: leading
    tokens that never merge nor drop (CLS). merge_op: how a merged group becomes one token (``merge_average``):
    "mean" (size-weighted average, ``merge_wavg``) or "mlerp" (ToFu's norm-preserving average, ``merge_mlerp``);
    methods that only drop ignore it.
    """

    name: str = "base"
    needs_attention: bool = False
    needs_shift: bool = False
    position: str = "attn"
    #: ``plan`` passes r unchanged to ``bipartite_soft_matching`` / ``drop_lowest``, so a ``RowBudget`` plans rows
    #: of different counts at once (else ``merging.rows`` runs the method once per group of equal rows)
    row_budgets: bool = False

    def __init__(self, proportional_attention: bool = True, protected: int = 0, merge_op: str = "mean") -> None:
        self.proportional_attention = proportional_attention
        self.protected = protected
        if merge_op not in MERGE_OPS:
            raise ValueError(f"unknown merge_op {merge_op!r}; choose one of {MERGE_OPS}")
        self.merge_op = merge_op

    @staticmethod
    def per_row(state: MergeState, r: RValue | Tensor) -> bool:
        """Whether this step goes row by row (``merging.rows``): rows of different counts, packed rows, or r per row."""
        return state.count is not None or state.packed or not isinstance(r, (int, float))

    def merge_average(self, plan: MergePlan, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
        """Apply a merge plan with this method's merge_op: x (B, N, C), size (B, N, 1) or None -> (x', size')."""
        if self.merge_op == "mlerp":
            return merge_mlerp(plan, x, size)
        return merge_wavg(plan, x, size)

    @abstractmethod
    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> MergePlan | DropPlan:
        """x: (B, N, C) hidden state at the method's position -> a plan removing r tokens. state: this forward's
        MergeState (representation shift, blocks done so far); None when called outside a block."""

    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        """Remove r tokens of x: (B, N, C) -> (B, N - r', C), updating state.size / state.source / state.shift.

        Rows of different counts (``state.count``), packed rows, or r per row ((B,) tensor or ``RowBudget``): each
        row gets the merges it gets alone (``merging.rows.call_rows``)."""
        if self.per_row(state, r):
            return call_rows(self, x, state, attn, r)
        r_eff = effective_r(r, x.shape[1], self.protected)
        if r_eff == 0:
            return x
        state.init_source(x)
        plan = self.plan(x, attn, r_eff, state)
        state.grid = self.grid_after(state.grid, r_eff)
        if isinstance(plan, DropPlan):
            x = keep_tokens(plan, x)
            if state.size is not None:
                state.size = keep_tokens(plan, state.size)
            if state.shift is not None:
                state.shift = keep_tokens(plan, state.shift)
            if state.source is not None:
                state.source = keep_tokens(plan, state.source)
            return x
        x, state.size = self.merge_average(plan, x, state.size)
        state.shift = None  # merged tokens have no shift of their own; the next MLP records a fresh one
        if state.source is not None:
            state.source = merge_tokens(plan, state.source, mode="amax")
        return x

    def for_encoder(self, encoder: nn.Module) -> "MergeMethod":
        """This method as ``patch`` installs it in encoder: self, unless an option depends on the encoder (e.g.
        PiToMe's margin schedule on its depth), then a configured copy."""
        return self

    def tokens_removed(self, r: int, grid: TokenGrid | None) -> int:
        """Tokens this method removes when asked for r (already capped by ``effective_r``) on tokens tiled as grid:
        r itself, unless the method can only remove certain counts (e.g. the same count in every frame) and says
        so by overriding this; ``schedule.token_counts(..., method=, grid=)`` uses it."""
        return r

    def grid_after(self, grid: TokenGrid | None, r: int) -> TokenGrid | None:
        """The TokenGrid after this method removed r tokens: None (the grid is lost) unless the method merges
        the same count in every frame and says so by overriding this."""
        return None

    def shift_of(self, state: MergeState | None) -> Tensor:
        """state.shift (B, N, 1), or a ValueError saying how to get it recorded."""
        if state is None or state.shift is None:
            raise ValueError(
                f"{type(self).__name__} needs the representation shift: run it in the blocks of an encoder whose "
                "forward starts from encoder.new_merge_state() (MergeState(record_shift=True))")
        return state.shift

    def __repr__(self) -> str:
        return f"{type(self).__name__}(proportional_attention={self.proportional_attention}, protected={self.protected})"


class ToMe(MergeMethod):
    """Token Merging (Bolya et al., 2023): bipartite soft matching on keys (or hidden states), size-weighted mean.

    metric: "keys" (head-mean keys, as ToMe) or "hidden" (the hidden state, as vid-TLDR matches).
    """

    name = "tome"
    row_budgets = True

    def __init__(self, metric: str = "keys", proportional_attention: bool = True, protected: int = 0,
                 merge_op: str = "mean") -> None:
        super().__init__(proportional_attention, protected, merge_op)
        if metric not in ("keys", "hidden"):
            raise ValueError(f"ToMe metric must be 'keys' or 'hidden', got {metric!r}")
        self.metric = metric
        self.needs_attention = metric == "keys"

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> MergePlan:
        metric = matching_metric(x, attn, self.metric, "ToMe(metric='keys')")
        return bipartite_soft_matching(metric, r, protected=self.protected, sort_unmerged=self.protected > 0)


class VidTLDR(MergeMethod):
    """vid-TLDR (Choi et al., CVPR 2024): ToMe matching on the hidden state, every merged source weighted by its
    saliency, so background tokens (saliency 0) are dropped. Official semantics with saliency "entropy".

    saliency: "entropy" (official: sharpness of this block's attention, needs the attention) or "repshift"
    (Representation Shift, Choi et al., ICCV 2025: the L2 distance the MLP moved each token, through the same
    min-max / background / sharpening steps; no attention map, so the fused kernel runs and no q / k pass is paid).
    position (repshift only): "attn" (default) merges where vid-TLDR and ToMe do, between the attention residual
    and the MLP, so the FLOPs stay ToMe's; the score there is the shift of the PREVIOUS block's MLP, handed over
    in MergeState.shift (in the first block, where no MLP ran yet, the shift across this block's attention).
    "mlp" merges after this block's MLP with its own shift, as the paper measures and prunes (see RepShiftDrop),
    at the price of running this block's MLP on the r merged tokens too. Why "attn" by default: the paper measures
    across the MLP (its Fig. 2), and vid-TLDR merges before the MLP; handing the last MLP's shift to the next merge
    keeps both, at ToMe's token counts per block.
    prefix_in_saliency: whether the protected prefix tokens (a CLS) enter the saliency. True (default): the
    official computation over all tokens (the CLS row joins the min-max / mean, the CLS column every entropy).
    False: the saliency of the patch tokens alone (attention renormalised over patch keys; the CLS gets 0 and is
    never a source anyway). No effect without prefix tokens (UMT, VideoMAE).
    metric: what the bipartite matching compares: "hidden" (official: the C-wide hidden state) or "keys" (ToMe's
    head-mean keys, C / heads wide: 12x cheaper matching on UMT-B, the only FLOPs vid-TLDR adds to ToMe's besides
    the saliency; needs the attention slot's keys, which every attention path exposes). Position "attn" only.
    """

    name = "vidtldr"
    row_budgets = True
    METRICS = ("hidden", "keys")
    SALIENCIES = ("entropy", "repshift")

    def __init__(
        self, proportional_attention: bool = True, protected: int = 0, chunk_size: int = 512,
        saliency_backend: str = "auto", saliency: str = "entropy", position: str = "attn",
        prefix_in_saliency: bool = True, metric: str = "hidden", merge_op: str = "mean",
    ) -> None:
        super().__init__(proportional_attention, protected, merge_op)
        self.prefix_in_saliency = prefix_in_saliency
        if metric not in self.METRICS:
            raise ValueError(f"unknown vid-TLDR metric {metric!r}; choose one of {self.METRICS}")
        if metric == "keys" and position != "attn":
            raise ValueError("vid-TLDR's 'keys' metric reads the keys at the attention slot: position must be 'attn', "
                             f"got {position!r}")
        self.metric = metric
        if chunk_size < 1:
            raise ValueError(f"vid-TLDR chunk_size must be a positive number of queries, got {chunk_size}")
        if saliency not in self.SALIENCIES:
            raise ValueError(f"unknown vid-TLDR saliency {saliency!r}; choose one of {self.SALIENCIES}")
        self.position = check_position(position)
        if saliency == "entropy" and position != "attn":
            raise ValueError("vid-TLDR's entropy saliency comes from the block's attention: position must be 'attn', "
                             f"got {position!r}")
        self.chunk_size = chunk_size
        self.saliency_backend = check_saliency_backend(saliency_backend)
        self.saliency = saliency
        self.needs_attention = saliency == "entropy" or metric == "keys"
        self.needs_shift = saliency == "repshift"

    def token_saliency(self, attn: AttentionInfo | None, state: MergeState | None) -> Tensor:
        """(B, N, 1) saliency in [0, 1] of the tokens at the merge slot."""
        p = 0 if self.prefix_in_saliency else self.protected
        pad = _padding(state, p)
        if self.saliency == "repshift":
            with torch.no_grad():
                shift = self.shift_of(state)
                return _pad_prefix(sharpen(shift[:, p:], pad), p)
        if attn is None:
            raise ValueError("vid-TLDR needs the block's attention (AttentionInfo)")
        if p:
            attn = _without_prefix(attn, p)
        return _pad_prefix(vidtldr_saliency(attn, self.chunk_size, self.saliency_backend, pad), p)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> MergePlan:
        saliency = self.token_saliency(attn, state)
        metric = matching_metric(x, attn, self.metric, "vid-TLDR(metric='keys')")
        plan = bipartite_soft_matching(metric, r, protected=self.protected, sort_unmerged=True, affine_scores=True)
        plan.src_weight = even_gather(saliency, plan.src_idx)
        return plan


def _without_prefix(attn: AttentionInfo, p: int) -> AttentionInfo:
    """The attention among tokens p.. only: probs (B, H, N, N) -> renormalised (B, H, N-p, N-p); q / k sliced."""
    if attn.probs is not None:
        probs = attn.probs[..., p:, p:]
        return AttentionInfo(probs=probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12))
    return AttentionInfo(q=attn.q[:, :, p:], k=attn.k[:, :, p:])


def _padding(state: MergeState | None, p: int = 0) -> Tensor | None:
    """(B, N - p) True at the padding tokens of rows of different counts (state.count), or None."""
    if state is None or state.count is None:
        return None
    return state.padding_mask()[:, p:]


def _pad_prefix(saliency: Tensor, p: int) -> Tensor:
    """(B, N-p, 1) -> (B, N, 1) with saliency 0 for the p prefix tokens."""
    return torch.cat([saliency.new_zeros(saliency.shape[0], p, 1), saliency], dim=1) if p else saliency


class VidTLDRRepShift(VidTLDR):
    """vid-TLDR with the Representation-Shift saliency: ``VidTLDR(saliency="repshift")`` by name (see VidTLDR)."""

    name = "vidtldr_repshift"

    def __init__(self, proportional_attention: bool = True, protected: int = 0, position: str = "attn",
                 metric: str = "hidden", prefix_in_saliency: bool = True, merge_op: str = "mean") -> None:
        super().__init__(proportional_attention, protected, saliency="repshift", position=position, metric=metric,
                         prefix_in_saliency=prefix_in_saliency, merge_op=merge_op)


class RandomMerge(MergeMethod):
    """Baseline: merge r random even tokens into random odd tokens (size-weighted)."""

    name = "random"

    def __init__(self, seed: int | None = None, proportional_attention: bool = True, protected: int = 0,
                 merge_op: str = "mean") -> None:
        super().__init__(proportional_attention, protected, merge_op)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> MergePlan:
        b, n, _ = x.shape
        n_a, n_b = (n + 1) // 2, n // 2
        first = (self.protected + 1) // 2
        keys = torch.rand(b, n_a, generator=self.generator)
        keys[:, :first] = -1.0
        order = keys.argsort(dim=-1, descending=True)[..., None].to(x.device)
        src_idx, unm_idx = order[:, :r], order[:, r:].sort(dim=-2)[0]
        lo = self.protected // 2
        dst_idx = torch.randint(lo, n_b, (b, r, 1), generator=self.generator).to(x.device)
        return MergePlan(src_idx=src_idx, dst_idx=dst_idx, unm_idx=unm_idx)


_MASK32 = 0xFFFFFFFF


def _mix32(h: int | Tensor) -> int | Tensor:
    """A 32-bit integer hash finaliser on ints or int64 tensors holding values in [0, 2^32) (products stay < 2^59,
    so no overflow on any device)."""
    h = (((h >> 16) ^ h) * 0x45D9F3B) & _MASK32
    h = (((h >> 16) ^ h) * 0x45D9F3B) & _MASK32
    return (h >> 16) ^ h


def random_keys(seed: int, layer: int, batch: int, tokens: int, device: torch.device | str | None = None) -> Tensor:
    """(batch, tokens) int64 pseudo-random keys in [0, 2^32), a hash of (seed, layer, row, position)."""
    base = _mix32(_mix32(seed & _MASK32) ^ (layer & _MASK32))
    rows = torch.arange(batch, device=device, dtype=torch.int64)[:, None]
    cols = torch.arange(tokens, device=device, dtype=torch.int64)[None, :]
    return _mix32(_mix32(rows ^ base) ^ cols)


class RandomDrop(MergeMethod):
    """Baseline: drop r random tokens, no merging (the baseline LITE, arXiv 2411.13626, found most reduction
    methods fail to beat). The draw hashes (seed, block index, the sample's row in the batch, token position) with
    integer tensor ops: the same for a seed on every device and rerun, independent of the tokens' values, and
    compilable (no host generator). Prefix tokens are never dropped."""

    name = "random_drop"
    row_budgets = True

    def __init__(self, seed: int = 0, proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"random_drop seed must be an integer, got {seed!r}")
        self.seed = seed

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> DropPlan:
        layer = len(state.tokens_per_layer) if state is not None else 0
        keys = random_keys(self.seed, layer, x.shape[0], x.shape[1], x.device)
        return drop_lowest(keys, r, self.protected)


class SaliencyDrop(MergeMethod):
    """Drop the r least salient tokens by vid-TLDR's saliency (attention sharpness), no merging.

    vid-TLDR's sharpened saliency is a non-decreasing function of the raw negative entropy (background ties at 0),
    so the raw score ranks: the same drops wherever the sharpened score tells tokens apart, background ties broken
    by sharpness instead of position. 0 log 0 = 0 on every attention path (no NaN from underflowed probabilities).
    """

    name = "saliency_drop"
    row_budgets = True
    needs_attention = True

    def __init__(
        self, chunk_size: int = 512, saliency_backend: str = "auto", proportional_attention: bool = True,
        protected: int = 0,
    ) -> None:
        super().__init__(proportional_attention, protected)
        if chunk_size < 1:
            raise ValueError(f"saliency_drop chunk_size must be a positive number of queries, got {chunk_size}")
        self.chunk_size = chunk_size
        self.saliency_backend = check_saliency_backend(saliency_backend)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> DropPlan:
        if attn is None:
            raise ValueError("saliency_drop needs the block's attention (AttentionInfo)")
        score = raw_saliency(attn, self.chunk_size, self.saliency_backend, zero_safe=True, pad=_padding(state))
        return drop_lowest(score, r, self.protected)


class RepShiftDrop(MergeMethod):
    """Representation Shift pruning (Choi et al., ICCV 2025, arXiv 2508.00367): drop the r tokens that the MLP
    moved least (L2 distance of the token before and after the MLP sublayer), no merging, no attention map.

    position "mlp" (default, the paper's): measure the shift across this block's MLP and prune this block's output
    (the paper's schedules also prune at block 0, which only the same block's MLP can score). "attn": prune
    between the attention residual and the MLP, as ToMe, with the previous block's shift (first block: the shift
    across its attention), which saves this block's MLP on the dropped tokens.
    """

    name = "repshift_drop"
    row_budgets = True
    needs_shift = True

    def __init__(self, position: str = "mlp", proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        self.position = check_position(position)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int, state: MergeState | None = None) -> DropPlan:
        return drop_lowest(self.shift_of(state), r, self.protected)


METHODS: dict[str, type[MergeMethod]] = {
    m.name: m for m in (ToMe, VidTLDR, RandomMerge, VidTLDRRepShift, RandomDrop, SaliencyDrop, RepShiftDrop)
}


def register_method(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: put a MergeMethod subclass into METHODS under its ``name`` (a duplicate name is an error)."""
    if not (isinstance(cls, type) and issubclass(cls, MergeMethod)):
        raise TypeError(f"register_method takes a MergeMethod subclass, got {cls!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"a merge method named {cls.name!r} is already registered ({METHODS[cls.name].__name__})")
    METHODS[cls.name] = cls
    return cls


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


def build_method(method: str | MergeMethod, **kwargs: object) -> MergeMethod | None:
    """A method from its name (any key of METHODS, case, "-" and "_" ignored; "none" -> None) or pass an
    instance through."""
    if isinstance(method, MergeMethod):
        if kwargs:
            raise ValueError("method options are only accepted together with a method name")
        return method
    key = _key(method)
    if key in ("none", "off", ""):
        return None
    by_key = {_key(name): cls for name, cls in METHODS.items()}
    if key not in by_key:
        raise ValueError(f"unknown merge method {method!r}; choose one of {['none', *METHODS]}")
    cls = by_key[key]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            options = sorted(set(params) - {"self"})
            raise ValueError(f"merge method {cls.name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                             f"{options}")
    return cls(**kwargs)
