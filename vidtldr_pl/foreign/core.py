"""Merging in place on models we did not write (transformers, timm, open_clip): the adapter contract and the graft.

A ``FamilyAdapter`` says, for one family of encoders, where the encoder and its blocks are, how many prefix tokens
(CLS, registers, distillation) lead the sequence, how one block's two residual branches are computed from the
family's own sub-modules (norm, q / k / v, output projection, layer-scale, drop-path, MLP) and how a block is called
(its argument holding the hidden states, what it returns). ``adapt(model)`` grafts our merge contract onto every
encoder it finds:

- the encoder's class becomes a subclass of its own class and ``merging.MergeableEncoder`` (ToMe's way), so
  ``patch`` / ``apply_merge`` / ``find_mergeable`` see it; each block's class becomes a subclass whose ``forward``
  runs ``merging.block.merging_block_forward`` (merge slot between the attention residual and the MLP, proportional
  attention through the log-size bias) while the encoder merges, and the family's own ``forward`` otherwise, so a
  model with merging off is bit-identical to the unpatched one;
- a forward pre-hook on the encoder starts a fresh ``MergeState`` per forward (kept afterwards as
  ``encoder.last_merge_state``: sizes for size-aware pooling, tokens per layer for the reports);
- the adapter's ``install_pooling`` makes the model's own token averaging size-aware where it has one.

``restore(model)`` undoes all of it (classes, hooks, attributes), so ``unpatch`` gives back the original model.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import UserError
from ..merging.block import merging_block_forward
from ..merging.encoder import MergeableEncoder, MergeSettings
from ..merging.state import AttentionInfo, MergeState
from ..ops import ATTENTION_MODES, attention


def qualified_names(module: nn.Module) -> set[str]:
    """``module.Class`` names of the classes in ``type(module)``'s MRO (matching a library's class by name, without
    importing the library)."""
    return {f"{k.__module__}.{k.__qualname__}" for k in type(module).__mro__}


class UnsupportedModelError(UserError, TypeError):
    """A model object no family adapter knows (names its class and the supported ones)."""


class FamilyAdapter:
    """How to make one family's encoders mergeable. Subclasses set ``name`` / ``pooling`` and implement the
    methods marked "family"; the defaults fit a pre-norm ViT block ``x + ls1(attn(norm1(x)))``,
    ``x + ls2(mlp(norm2(x)))``.

    Class attributes:
        name: what users call the family, e.g. "timm VisionTransformer".
        classes: qualified class names (``module.Class``) of the models the adapter accepts: the model itself or any
            of its sub-modules may be one (matched on the MRO's names, so no library is imported to check).
        pooling: one line for docs/backbones.md: how the model's own pooling reads merged tokens.
    """

    name: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    pooling: ClassVar[str] = ""

    # ---------------------------------------------------------------- finding the encoders (family)
    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        names = qualified_names(module)
        return any(c in names for c in cls.classes)

    def encoders(self, model: nn.Module) -> list[nn.Module]:
        """The encoder modules of ``model`` (the ones whose ``blocks`` run in sequence). Default: every sub-module
        (model included) that ``accepts``."""
        return [m for m in model.modules() if self.accepts(m)]

    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        """family: the encoder's blocks, in order."""
        raise NotImplementedError

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        """The module whose forward runs the blocks (where each forward's MergeState starts). Default: the encoder."""
        return encoder

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        """family: leading tokens never merged (CLS, registers, distillation)."""
        raise NotImplementedError

    def num_tokens(self, encoder: nn.Module) -> int | None:
        """Tokens entering the first block for the configured input (None when unknown)."""
        return None

    def attention_mode(self, encoder: nn.Module) -> str:
        """"fused" (sdpa) or "explicit" (eager), as the model is configured. Default: fused."""
        return "fused"

    # ---------------------------------------------------------------- one block (family)
    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        """family: normalised input x (B, N, C) -> q, k, v (B, H, N, d) and the attention scale."""
        raise NotImplementedError

    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        """family: x (B, N, C) -> the attention's input (norm1(x))."""
        raise NotImplementedError

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        """family: attention context (B, N, C) (heads concatenated) -> what the residual adds (projection,
        dropout, layer-scale, drop-path)."""
        raise NotImplementedError

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        """family: x (B, N, C) after the attention residual -> what the MLP residual adds."""
        raise NotImplementedError

    def hidden_states(self, block: nn.Module, args: tuple, kwargs: dict) -> Tensor:
        """The block's input hidden states among its call arguments. Default: the first positional argument or
        ``hidden_states`` / ``x``."""
        if args:
            return args[0]
        for key in ("hidden_states", "x"):
            if key in kwargs:
                return kwargs[key]
        raise TypeError(f"{type(block).__name__}: no hidden states among the block's arguments")

    def attn_branch(self, block: nn.Module, x: Tensor, bias: Tensor | None, want_info: bool
                    ) -> tuple[Tensor, AttentionInfo | None]:
        """x (B, N, C), bias (B, 1, 1, N) log-size or None -> (what the attention residual adds (B, N, C),
        AttentionInfo or None). Default: one attention from ``attn_input`` / ``qkv`` / ``attn_output``; a family whose
        block runs several attentions or extra tokens (TimeSformer, X-CLIP) overrides it."""
        q, k, v, scale = self.qkv(block, self.attn_input(block, x))
        out, info = attend(block, q, k, v, scale, bias, want_info)
        return self.attn_output(block, out), info

    def block_output(self, block: nn.Module, x: Tensor, args: tuple, kwargs: dict) -> Any:
        """What the block returns to its encoder for output tokens x. Default: x itself."""
        return x

    # ---------------------------------------------------------------- model level
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """Make the model's own token averaging size-aware (hooks; returned so ``restore`` removes them).
        Default: nothing (CLS pooling needs nothing)."""
        return []


_ADAPTERS: list[type[FamilyAdapter]] = []


def register_family(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Decorator: make ``adapt`` try this family (in registration order)."""
    if adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)
    return adapter


def supported_families() -> list[str]:
    """The names of the registered families (for messages and docs)."""
    return [a.name for a in _ADAPTERS]


# -------------------------------------------------------------------------------------- the grafted classes
def _block_branches(adapter: FamilyAdapter) -> dict[str, Callable]:
    """``_attn_branch`` / ``_mlp_branch`` (merging.block.BranchedBlock) computed from the family's modules."""

    def _attn_branch(self: nn.Module, x: Tensor, bias: Tensor | None, want_info: bool
                     ) -> tuple[Tensor, AttentionInfo | None]:
        return adapter.attn_branch(self, x, bias, want_info)

    def _mlp_branch(self: nn.Module, x: Tensor) -> Tensor:
        return adapter.mlp_branch(self, x)

    return {"_attn_branch": _attn_branch, "_mlp_branch": _mlp_branch}


def _merging_block_class(cls: type[nn.Module], adapter: FamilyAdapter) -> type[nn.Module]:
    original_forward = cls.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        encoder = self._merge_encoder()
        state = encoder.merge_state if encoder is not None else None
        if state is None:  # merging off: the family's own forward, bit for bit
            return original_forward(self, *args, **kwargs)
        x = merging_block_forward(self, adapter.hidden_states(self, args, kwargs), state)
        return adapter.block_output(self, x, args, kwargs)

    return type(f"Merging{cls.__name__}", (cls,), {"forward": forward, **_block_branches(adapter),
                                                  "_vidtldr_original_class": cls})


def _mergeable_encoder_class(encoder: nn.Module, adapter: FamilyAdapter) -> type[nn.Module]:
    cls = type(encoder)

    def set_attention(self: nn.Module, mode: str) -> None:
        if mode not in ("fused", "explicit"):
            raise ValueError(f"attention mode of a {adapter.name} encoder must be 'fused' or 'explicit', got {mode!r}")
        for block in adapter.blocks(self):
            block.merge_attention = mode

    def set_grad_checkpointing(self: nn.Module, enable: bool = True) -> None:
        for block in adapter.blocks(self):  # the merging forward's recomputation
            block.grad_checkpointing = enable
        own = getattr(cls, "set_grad_checkpointing", None)
        if own is not None:  # and the model's own, used while it does not merge
            own(self, enable)

    attrs: dict[str, Any] = {
        "_vidtldr_original_class": cls,
        # properties win over the instance's own attributes (timm keeps num_prefix_tokens there: the adapter
        # reads it from the instance dict)
        "num_prefix_tokens": property(adapter.num_prefix_tokens),
        "num_tokens": property(adapter.num_tokens),
        "set_attention": set_attention,
        "set_grad_checkpointing": set_grad_checkpointing,
        "foreign_family": adapter.name,
    }
    if "blocks" not in encoder._modules:
        attrs["blocks"] = property(adapter.blocks)
    return type(f"Mergeable{cls.__name__}", (cls, MergeableEncoder), attrs)


def _start_state(encoder: nn.Module) -> Callable[..., None]:
    """A forward pre-hook (on the module whose forward runs the blocks) that starts a fresh MergeState while the
    encoder merges (None otherwise: the blocks run as written)."""
    ref = weakref.ref(encoder)

    def hook(module: nn.Module, args: tuple) -> None:
        enc = ref()
        settings = getattr(enc, "merge_settings", None)
        enc.merge_state = enc.new_merge_state() if settings is not None and settings.method is not None else None

    return hook


def _end_state(encoder: nn.Module) -> Callable[..., None]:
    ref = weakref.ref(encoder)

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        enc = ref()
        enc.last_merge_state = enc.merge_state
        enc.merge_state = None

    return hook


# -------------------------------------------------------------------------------------- adapt / restore
def find_family(model: nn.Module) -> FamilyAdapter | None:
    """The first registered family with an encoder in ``model``."""
    for adapter_cls in _ADAPTERS:
        adapter = adapter_cls()
        if adapter.encoders(model):
            return adapter
    return None


def adapt(model: nn.Module) -> list[nn.Module]:
    """Graft the merge contract onto every encoder of ``model`` (in place, idempotent); returns the encoders.

    Raises UnsupportedModelError (one line naming the class and the supported families) for a model no adapter
    knows."""
    grafted = [m for m in model.modules() if isinstance(m, MergeableEncoder) and hasattr(m, "foreign_family")]
    if grafted:
        return grafted
    adapter = find_family(model)
    if adapter is None:
        raise UnsupportedModelError(
            f"{type(model).__module__}.{type(model).__qualname__} is not a model vidtldr_pl can merge in place; "
            f"supported: {', '.join(supported_families())} (and the vidtldr_pl.backbones presets)")
    encoders = adapter.encoders(model)
    for encoder in encoders:
        mode = adapter.attention_mode(encoder)
        if mode not in ATTENTION_MODES:
            raise ValueError(f"{adapter.name}: unknown attention mode {mode!r}")
        for block in adapter.blocks(encoder):
            block.__class__ = _merging_block_class(type(block), adapter)
            graft_attribute(block, "merge", None)
            graft_attribute(block, "grad_checkpointing", False)
            graft_attribute(block, "merge_attention", mode)
            graft_attribute(block, "_merge_encoder", weakref.ref(encoder))  # a weakref: no cycle in modules()
        encoder.__class__ = _mergeable_encoder_class(encoder, adapter)
        graft_attribute(encoder, "merge_settings", MergeSettings())
        graft_attribute(encoder, "merge_state", None)
        graft_attribute(encoder, "last_merge_state", None)
        runner = adapter.block_runner(encoder)
        handles = [runner.register_forward_pre_hook(_start_state(encoder)),
                   runner.register_forward_hook(_end_state(encoder))]
        handles += adapter.install_pooling(model, encoder)
        graft_attribute(encoder, "_merge_handles", handles)
    return encoders


_MISSING = object()


def graft_attribute(module: nn.Module, name: str, value: Any) -> None:
    """Set an attribute, remembering what was there (``restore`` puts it back or deletes it)."""
    saved = module.__dict__.setdefault("_vidtldr_saved", {})
    if name not in saved:
        saved[name] = module.__dict__.get(name, module._modules.get(name, _MISSING))
    setattr(module, name, value)


def restore(model: nn.Module) -> nn.Module:
    """Undo ``adapt`` on every grafted encoder of ``model``: original classes, no hooks, attributes as before."""
    for module in list(model.modules()):
        original = type(module).__dict__.get("_vidtldr_original_class")
        if original is None:
            continue
        for handle in module.__dict__.get("_merge_handles", []):
            handle.remove()
        for name, value in module.__dict__.pop("_vidtldr_saved", {}).items():
            module.__dict__.pop(name, None)
            module._modules.pop(name, None)
            if value is not _MISSING:
                setattr(module, name, value)
        module.__class__ = original
    return model


def attend(block: nn.Module, q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None, want_info: bool
           ) -> tuple[Tensor, AttentionInfo | None]:
    """q, k, v (B, H, N, d), bias (B, 1, 1, N) or None -> (context (B, N, H * d) through the block's
    ``merge_attention`` kernel, AttentionInfo (explicit: probs and k; fused: scaled q and k) when want_info)."""
    out, probs = attention(q, k, v, scale, bias, block.merge_attention, need_probs=want_info)
    b, h, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, h * d)
    if not want_info:
        return out, None
    if probs is not None:
        return out, AttentionInfo(probs=probs, k=k.detach())
    return out, AttentionInfo(q=(q * scale).detach(), k=k.detach())


def head_split(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, H * d) -> (B, H, N, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def size_weighted_mean(tokens: Tensor, state: MergeState | None, skip: int = 0) -> Tensor:
    """tokens (B, N, C) -> (B, C): the mean over tokens[:, skip:] weighted by their sizes (plain mean without a
    merge)."""
    tokens = tokens[:, skip:]
    if state is None or state.size is None:
        return tokens.mean(dim=1)
    size = state.size[:, skip:].to(tokens.dtype)
    return (tokens * size).sum(dim=1) / size.sum(dim=1)


__all__ = ["FamilyAdapter", "UnsupportedModelError", "adapt", "attend", "find_family", "graft_attribute", "head_split",
           "qualified_names", "register_family", "restore", "size_weighted_mean", "supported_families"]
