"""Forward hooks that several family adapters install (``FamilyAdapter.install_pooling`` returns their handles, so
``restore`` removes them):

- ``size_bias_in_attention_pool``: an attention-pooling head (a probe / query set attending over the encoder's
  tokens through an ``nn.MultiheadAttention``: SigLIP's MAP head, open_clip's AttentionalPooler) gets the
  log-size bias of the merged tokens as its additive ``attn_mask``: proportional attention, as in the merged blocks,
  so a token standing for s patches weighs as s identical keys;
- ``hand_over_checkpointing``: while the encoder merges, the model's own activation checkpointing (which re-runs a
  whole block, merge included, in the backward pass) is turned off and the blocks' ``grad_checkpointing`` (the
  merging forward's own recomputation of the two branches, the merge outside it) on, then both are put back;
- ``size_weighted_classifier_input``: a transformers classifier head over the mean of the tokens reads the
  size-weighted mean instead.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .core import size_weighted_mean


def size_bias_in_attention_pool(mha: nn.MultiheadAttention, encoder: nn.Module) -> RemovableHandle:
    """A pre-hook on ``mha`` (called as ``mha(query, key, value, ...)`` over the merged tokens): while the encoder's
    ``last_merge_state`` holds sizes for these keys, ``attn_mask`` becomes log(size) per key, (B x heads, L, S).
    A mask the caller passes is kept and the bias added to it."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state = getattr(encoder, "last_merge_state", None)
        if state is None or state.size is None or not state.proportional_attention:
            return None
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        batch_first = module.batch_first
        b, s = (key.shape[0], key.shape[1]) if batch_first else (key.shape[1], key.shape[0])
        size = state.size
        if size.shape[0] != b or size.shape[1] != s:
            return None  # not the merged tokens (another input): leave the call as written
        lq = query.shape[1] if batch_first else query.shape[0]
        bias = size.log()[..., 0].to(query.dtype)  # (B, S)
        bias = bias[:, None, None, :].expand(b, module.num_heads, lq, s).reshape(b * module.num_heads, lq, s)
        kwargs = dict(kwargs)
        given = kwargs.get("attn_mask")
        if given is not None:
            if given.dtype == torch.bool:
                given = torch.zeros_like(given, dtype=bias.dtype).masked_fill_(given, float("-inf"))
            bias = bias + given
        kwargs["attn_mask"] = bias
        return args, kwargs

    return mha.register_forward_pre_hook(hook, with_kwargs=True)


def hand_over_checkpointing(runner: nn.Module, encoder: nn.Module, blocks: Callable[[], Any],
                            own_flags: Callable[[], list[tuple[nn.Module, str]]]) -> list[RemovableHandle]:
    """Hooks on ``runner`` (a module whose forward runs the blocks): while the encoder merges, every ``(module, attribute)`` of ``own_flags()`` that is true is
    set False for the forward, and the blocks' ``grad_checkpointing`` set True in its place; both are put back
    after the forward (or at the next forward, if one raised)."""
    saved: list[tuple[nn.Module, str, Any, bool]] = []  # (module, name, old value, was in the instance dict)

    def put_back() -> None:
        while saved:
            module, name, value, own = saved.pop()
            if own:
                setattr(module, name, value)
            else:
                module.__dict__.pop(name, None)

    def swap(module: nn.Module, name: str, value: Any) -> None:
        saved.append((module, name, getattr(module, name), name in module.__dict__))
        setattr(module, name, value)

    def before(module: nn.Module, args: tuple) -> None:
        put_back()
        settings = getattr(encoder, "merge_settings", None)
        if settings is None or settings.method is None:  # not merging: the model checkpoints as it is configured
            return
        active = [(m, name) for m, name in own_flags() if getattr(m, name, False)]
        if not active:
            return
        for m, name in active:
            swap(m, name, False)
        for block in blocks():
            swap(block, "grad_checkpointing", True)

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        put_back()

    return [runner.register_forward_pre_hook(before), runner.register_forward_hook(after)]


def size_weighted_classifier_input(encoder: nn.Module, classifier: nn.Module, skip: int) -> list[RemovableHandle]:
    """A transformers ``...ForImageClassification`` whose head is ``classifier(mean(last_hidden_state[:, skip:]))``:
    the classifier's input becomes the size-weighted mean of those tokens while the encoder's last forward merged
    (a hook keeps the encoder's output tokens, a pre-hook on the classifier replaces its input)."""
    seen: dict[str, Tensor] = {}

    def keep(module: nn.Module, args: tuple, output: Any) -> None:
        seen["tokens"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def replace(module: nn.Module, args: tuple) -> tuple | None:
        tokens, state = seen.pop("tokens", None), getattr(encoder, "last_merge_state", None)
        if tokens is None or state is None or state.size is None or state.size.shape[1] != tokens.shape[1]:
            return None
        return (size_weighted_mean(tokens, state, skip=skip).to(args[0].dtype),)

    return [encoder.register_forward_hook(keep), classifier.register_forward_pre_hook(replace)]


__all__ = ["hand_over_checkpointing", "size_bias_in_attention_pool", "size_weighted_classifier_input"]
