"""Token-reduction methods behind one small interface.

A method turns (x, attention info, r) into a MergePlan; the shared arithmetic in ``matching`` applies it to the
hidden states, the sizes and the sources. Adding a method (pruning, random merge, ...) is one class.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .matching import MergePlan, bipartite_soft_matching, even_gather, merge_tokens, merge_wavg
from .saliency import check_saliency_backend, vidtldr_saliency
from .schedule import RValue, effective_r
from .state import AttentionInfo, MergeState


class MergeMethod(ABC):
    """Base class. Subclasses implement ``plan``; ``__call__`` applies it (x, size, source).

    needs_attention: the block must expose AttentionInfo (probs or q/k). proportional_attention: later blocks
    add log(size) to their attention logits. protected: leading tokens that never merge (CLS).
    """

    name: str = "base"
    needs_attention: bool = False

    def __init__(self, proportional_attention: bool = True, protected: int = 0) -> None:
        self.proportional_attention = proportional_attention
        self.protected = protected

    @abstractmethod
    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int) -> MergePlan:
        """x: (B, N, C) hidden state after the attention residual -> a plan removing r tokens."""

    def __call__(self, x: Tensor, state: MergeState, attn: AttentionInfo | None, r: RValue) -> Tensor:
        """Merge r tokens of x: (B, N, C) -> (B, N - r', C), updating state.size / state.source."""
        r_eff = effective_r(r, x.shape[1], self.protected)
        if r_eff == 0:
            return x
        state.init_source(x)
        plan = self.plan(x, attn, r_eff)
        x, state.size = merge_wavg(plan, x, state.size)
        if state.source is not None:
            state.source = merge_tokens(plan, state.source, mode="amax")
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(proportional_attention={self.proportional_attention}, protected={self.protected})"


class ToMe(MergeMethod):
    """Token Merging (Bolya et al., 2023): bipartite soft matching on keys (or hidden states), size-weighted mean.

    metric: "keys" (head-mean keys, as ToMe) or "hidden" (the hidden state, as vid-TLDR matches).
    """

    name = "tome"

    def __init__(self, metric: str = "keys", proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        if metric not in ("keys", "hidden"):
            raise ValueError(f"ToMe metric must be 'keys' or 'hidden', got {metric!r}")
        self.metric = metric
        self.needs_attention = metric == "keys"

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int) -> MergePlan:
        if self.metric == "keys":
            if attn is None or attn.k is None:
                raise ValueError("ToMe(metric='keys') needs the block's keys in AttentionInfo")
            metric = attn.k.mean(dim=1)
        else:
            metric = x
        return bipartite_soft_matching(metric, r, protected=self.protected, sort_unmerged=self.protected > 0)


class VidTLDR(MergeMethod):
    """vid-TLDR (Choi et al., CVPR 2024): ToMe matching on the hidden state, every merged source weighted by its
    attention-sharpness saliency, so background tokens (saliency 0) are dropped. Official semantics."""

    name = "vidtldr"
    needs_attention = True

    def __init__(
        self, proportional_attention: bool = True, protected: int = 0, chunk_size: int = 512,
        saliency_backend: str = "auto",
    ) -> None:
        super().__init__(proportional_attention, protected)
        if chunk_size < 1:
            raise ValueError(f"vid-TLDR chunk_size must be a positive number of queries, got {chunk_size}")
        self.chunk_size = chunk_size
        self.saliency_backend = check_saliency_backend(saliency_backend)

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int) -> MergePlan:
        if attn is None:
            raise ValueError("vid-TLDR needs the block's attention (AttentionInfo)")
        saliency = vidtldr_saliency(attn, self.chunk_size, self.saliency_backend)
        plan = bipartite_soft_matching(x, r, protected=self.protected, sort_unmerged=True, affine_scores=True)
        plan.src_weight = even_gather(saliency, plan.src_idx)
        return plan


class RandomMerge(MergeMethod):
    """Baseline: merge r random even tokens into random odd tokens (size-weighted)."""

    name = "random"

    def __init__(self, seed: int | None = None, proportional_attention: bool = True, protected: int = 0) -> None:
        super().__init__(proportional_attention, protected)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def plan(self, x: Tensor, attn: AttentionInfo | None, r: int) -> MergePlan:
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


METHODS: dict[str, type[MergeMethod]] = {m.name: m for m in (ToMe, VidTLDR, RandomMerge)}


def build_method(method: str | MergeMethod, **kwargs: object) -> MergeMethod | None:
    """A method from its name ("vidtldr", "tome", "random"; "none" -> None) or pass an instance through."""
    if isinstance(method, MergeMethod):
        if kwargs:
            raise ValueError("method options are only accepted together with a method name")
        return method
    key = str(method).lower().replace("-", "").replace("_", "")
    if key in ("none", "off", ""):
        return None
    if key not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {['none', *METHODS]}")
    return METHODS[key](**kwargs)
