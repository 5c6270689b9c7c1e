"""What a task needs from a model, as Protocols (the data side's counterpart is each task's ``...Data`` Protocol).

A backbone family says which of these its model classes implement (``implements = (DualEncoder, ...)`` on the
class, checked by ``tests/test_backbone_contract.py``); a task uses only the methods of the Protocol it needs and
chooses between behaviours with ``isinstance(model, FusionModel)`` and the like, never with ``hasattr`` on model
internals. Videos are (B, T, 3, H, W) unless a method says otherwise.

- ``VideoEncoder``: a ViT on the shared layers, whose blocks carry the merge slot (``merging.MergeableEncoder``,
  found by ``find_mergeable``), with switchable attention kernel and gradient checkpointing;
- ``DualEncoder``: vision / text embeddings in one space and a contrastive temperature (retrieval, MC);
- ``FusionModel``: a dual encoder with an image-text-matching head over fused tokens (ITM re-ranking);
- ``VideoClassifier``: video -> class logits (action recognition);
- ``ZeroShotClassifier``: a classifier whose classes are text prompts set at run time;
- ``VideoQAModel``: video + question -> ranked free-form answers (UMT-QA's generative head).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class VideoEncoder(Protocol):
    """A mergeable token encoder (``merging.MergeableEncoder``: ``blocks``, ``merge_settings``, ``num_tokens``) with
    these switches."""

    def set_attention(self, mode: str) -> None:
        """"fused" (SDPA), "explicit" (the reference path, full attention map) or "flex"."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute attention / MLP in the backward pass (merging stays outside the recomputed parts)."""


@runtime_checkable
class DualEncoder(Protocol):
    """Vision and text towers with embeddings in one space (ITC)."""

    def encode_vision(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, 3, H, W) -> (tokens (B, N', Dv), pooled (B, Dv))."""

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> text features: hidden states (B, L, Dt) (UMT) or pooled (B, Dt) (CLIP), whatever
        ``text_embed`` and (for a FusionModel) ``itm_logits`` take."""

    def vision_embed(self, pooled: Tensor) -> Tensor:
        """pooled (B, Dv) -> L2-normalised embedding (B, E)."""

    def text_embed(self, text_hidden: Tensor) -> Tensor:
        """text features from ``encode_text`` -> L2-normalised embedding (B, E)."""

    def temperature(self, clamp: bool = False) -> Tensor:
        """The contrastive temperature tau (logits = cosine / tau), a differentiable tensor of one element.
        clamp: first bring the underlying parameter into its recipe's range, in place (UMT's ``temp`` in
        [0.001, 0.5]; CLIP's ``logit_scale`` at most log(100)), as before each training step."""


@runtime_checkable
class FusionModel(DualEncoder, Protocol):
    """A dual encoder with fusion layers (text cross-attends to video tokens) and an ITM head."""

    def itm_logits(self, text_hidden: Tensor, text_mask: Tensor, video_tokens: Tensor | None,
                   memory: list[tuple[Tensor, Tensor]] | None = None, memory_index: Tensor | None = None) -> Tensor:
        """(text_hidden (B, L, Dt), text_mask (B, L), video_tokens (B, N', Dv)) or a precomputed ``memory`` of G
        videos with ``memory_index`` (B,) -> ITM logits (B, 2); [:, 1] is the match score."""

    def fusion_memory(self, video_tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """video_tokens (G, N', Dv) -> per fusion layer the cross-attention (keys, values) (G, H, N', hd)."""

    def fusion_memory_numel(self, num_tokens: int) -> int:
        """Elements ``fusion_memory`` holds per video of ``num_tokens`` tokens (to size a cache)."""


@runtime_checkable
class VideoClassifier(Protocol):
    """video (B, 3, T, H, W) -> class logits (B, K) through ``forward``."""

    def __call__(self, video: Tensor) -> Tensor: ...


@runtime_checkable
class ZeroShotClassifier(VideoClassifier, Protocol):
    """A classifier whose K classes are text prompts: ``set_class_names`` encodes them (kept until changed)."""

    class_names: list[str]

    def set_class_names(self, names: Sequence[str], template: str = ...) -> Tensor:
        """Encode ``template.format(name)`` for every name; returns the class features (K, E)."""


@runtime_checkable
class VideoQAModel(Protocol):
    """Video question answering with a generative answer decoder (UMT-QA)."""

    def encode_vision(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, 3, H, W) -> (tokens (B, N', Dv), pooled (B, Dv))."""

    def encode_question(self, video_tokens: Tensor, q_ids: Tensor, q_mask: Tensor) -> Tensor:
        """video tokens (B, N', Dv), question (B, Lq) -> question states (B, Lq, Dt)."""

    def answer_loss(self, states: Tensor, q_mask: Tensor, a_ids: Tensor, a_mask: Tensor, counts: Tensor,
                    weights: Tensor) -> Tensor:
        """Weighted answer NLL of the batch (a scalar)."""

    def rank_answers(self, states: Tensor, q_mask: Tensor, a_ids: Tensor, a_mask: Tensor, k: int = 128,
                     chunk: int | None = None) -> tuple[Tensor, Tensor]:
        """-> (answer indices (Q, k), probabilities (Q, k)), best first."""

    def init_from_pretrained(self, path: str) -> None:
        """Initialise from a checkpoint of the family's pretraining / retrieval model (fine-tuning's start)."""


INTERFACES = (VideoEncoder, DualEncoder, FusionModel, VideoClassifier, ZeroShotClassifier, VideoQAModel)

__all__ = ["DualEncoder", "FusionModel", "INTERFACES", "VideoEncoder", "VideoClassifier", "VideoQAModel",
           "ZeroShotClassifier"]
