"""CLIP's byte-level BPE, from open_clip (its wheel ships the vocabulary): the ``vificlip`` extra.

ids: (K, context_length) long, ``<start_of_text>`` first, ``<end_of_text>`` (49407, the largest id: the text tower
takes its feature at the argmax) last before the zero padding; longer texts are cut and end with EOT.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

SOT, EOT = 49406, 49407


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError as err:  # an optional dependency
        raise ImportError("the CLIP tokenizer needs open_clip: pip install 'vidtldr-pl[vificlip]'") from err
    return SimpleTokenizer()


def clip_tokenize(texts: str | Sequence[str], context_length: int = 77) -> Tensor:
    """texts -> ids (K, context_length) with CLIP's BPE (lower-cased, ftfy-cleaned, whitespace-collapsed)."""
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must hold at least <start> and <end>, got {context_length}")
    return _tokenizer()(list(texts), context_length=context_length)


class CLIPTokenizer:
    """The retrieval DataModules' tokenizer call shape: ``tok(texts, max_length=L)`` -> {"input_ids",
    "attention_mask"} (K, L) long; ``tokenizer: clip`` in a retrieval config selects it."""

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None, **_: Any) -> dict[str, Tensor]:
        ids = clip_tokenize(texts, max_length or 77)
        mask = torch.arange(ids.shape[1]) <= ids.argmax(-1, keepdim=True)  # up to EOT
        return {"input_ids": ids, "attention_mask": mask.long()}


__all__ = ["CLIPTokenizer", "EOT", "SOT", "clip_tokenize"]
