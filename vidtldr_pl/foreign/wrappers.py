"""Library models as the tasks see them (``vidtldr_pl.backbones.interfaces``): small modules around a transformers /
timm / open_clip model, which stays their ``model`` attribute (so ``apply_merge(wrapper, ...)`` grafts the encoders
it holds, and ``wrapper.model`` is the library's object, its own methods intact).

- ``VideoClassifierWrapper``: transformers ``VideoMAE`` / ``Vivit`` / ``Timesformer`` ``ForVideoClassification``:
  video (B, 3, T, H, W) -> logits (B, K) (the library takes ``pixel_values`` (B, T, 3, H, W));
- ``FrameClassifier``: an image classifier (timm ViT with a head, transformers ``...ForImageClassification``) run on
  every frame: the video's logits are the mean of its frames' logits (a linear head: the head of the mean feature);
- ``FrameFeatures``: an image backbone without a head (timm with ``num_classes=0``, ``Dinov2Model``, ...): the mean
  of its frames' pooled features (B, C);
- ``CLIPDualEncoder`` (transformers ``CLIPModel`` / ``SiglipModel``, ``OpenCLIPDualEncoder`` for open_clip ``CLIP``):
  a ``DualEncoder`` and ``ZeroShotClassifier`` as ViFi-CLIP: each frame's projected image embedding, their temporal
  mean, cosine against text embeddings scaled by exp(logit_scale);
- ``XCLIPZeroShot``: transformers ``XCLIPModel`` (its text side depends on the video, so no DualEncoder): a
  ``ZeroShotClassifier`` whose logits are the model's ``logits_per_video`` against the class prompts.

``wrap(model)`` picks the wrapper from the class and grafts the merge contract (``adapt``: merging off, bit-identical);
a model none of the families covers gets the one-line refusal there.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.contrastive import LogitScaleHead
from ..backbones.interfaces import DualEncoder, VideoClassifier, ZeroShotClassifier
from ..errors import UsageError
from .core import adapt

PROMPT_TEMPLATE = "a photo of a {}."
CLIP_VOCAB_SIZE = 49408  # OpenAI CLIP's BPE: what vidtldr_pl.text.clip_tokenize (and ``tokenizer: clip``) produce
VIDEO_MODEL_TYPES = ("videomae", "vivit", "timesformer", "xclip", "x_clip")


def frames_of(video: Tensor) -> Tensor:
    """(B, 3, T, H, W) -> (B x T, 3, H, W), frame-major within each video."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def logits_of(output: Any) -> Tensor:
    """A model output's logits (``.logits`` of a transformers output, the tensor itself otherwise)."""
    return output if isinstance(output, Tensor) else output.logits


def pooled_of(output: Any) -> Tensor:
    """A model output's pooled features (B, C): the tensor itself, else ``pooler_output`` (or the first token)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    return pooled if pooled is not None else output.last_hidden_state[:, 0]


def _call(model: nn.Module, images: Tensor) -> Any:
    """transformers models take ``pixel_values=``; timm / open_clip the tensor."""
    if type(model).__module__.startswith("transformers."):
        return model(pixel_values=images)
    return model(images)


class VideoClassifierWrapper(nn.Module):
    """A transformers video classifier as a ``VideoClassifier``: video (B, 3, T, H, W) -> logits (B, K)."""

    implements = (VideoClassifier,)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> Tensor:
        return logits_of(self.model(pixel_values=video.transpose(1, 2)))


class FrameClassifier(nn.Module):
    """An image classifier on every frame: video (B, 3, T, H, W) -> the mean of the frames' logits (B, K)."""

    implements = (VideoClassifier,)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        logits = logits_of(_call(self.model, frames_of(video)))
        return logits.reshape(b, -1, logits.shape[-1]).mean(dim=1)


class FrameFeatures(nn.Module):
    """An image backbone on every frame: video (B, 3, T, H, W) -> the mean of the frames' pooled features (B, C)
    (timm: its own pooling, size-aware while merging; transformers: ``pooler_output``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        pooled = pooled_of(_call(self.model, frames_of(video)))
        return pooled.reshape(b, -1, pooled.shape[-1]).mean(dim=1)


class _PromptClassifier(nn.Module):
    """What the zero-shot wrappers share: the class prompts (names, their encoding) kept until changed."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names: list[str] = []

    def _prompts(self, names: Sequence[str], template: str) -> list[str]:
        return [template.format(n.replace("_", " ")) for n in names]


class CLIPDualEncoder(LogitScaleHead, _PromptClassifier):
    """A CLIP-like image-text model as a video ``DualEncoder`` and ``ZeroShotClassifier`` (ViFi-CLIP's way): every
    frame's projected image embedding, their temporal mean; text embeddings from the model's text tower.

    Subclasses implement ``image_features`` (N, 3, H, W) -> (N, E), ``text_features`` (ids, mask) -> (K, E),
    ``tokenize`` (texts) -> (ids, mask) and ``logit_scale`` (the log of the scale, a parameter)."""

    implements = (DualEncoder, ZeroShotClassifier)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("class_features", torch.empty(0), persistent=False)

    # ---------------------------------------------------------------- what a library provides
    def image_features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale

    # ---------------------------------------------------------------- video
    def frame_features(self, video: Tensor) -> Tensor:
        """video (B, 3, T, H, W) -> per-frame embeddings (B, T, E)."""
        feats = self.image_features(frames_of(video))
        return feats.reshape(video.shape[0], video.shape[2], feats.shape[-1])

    def encode_vision(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, 3, H, W) (the retrieval DataModules' layout) -> (frame embeddings (B, T, E), their mean)."""
        frames = self.frame_features(video.transpose(1, 2))
        return frames, frames.mean(dim=1)

    # ---------------------------------------------------------------- text
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> projected text embeddings (B, E)."""
        return self.text_features(input_ids, attention_mask)

    # ---------------------------------------------------------------- zero-shot
    @torch.no_grad()
    def set_class_names(self, names: Sequence[str], template: str = PROMPT_TEMPLATE, batch_size: int = 256) -> Tensor:
        """Encode ``template.format(name)`` for every class once; kept as ``class_features`` (K, E), normalised."""
        ids, mask = self.tokenize(self._prompts(names, template))
        device = self.logit_scale.device
        feats = [self.text_embed(self.encode_text(ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)))
                 for i in range(0, ids.shape[0], batch_size)]
        self.class_features = torch.cat(feats)
        self.class_names = list(names)
        return self.class_features

    def forward(self, video: Tensor) -> Tensor:
        """video (B, 3, T, H, W) -> logits (B, K) = exp(logit_scale) x cosine with the class prompts."""
        if self.class_features.numel() == 0:
            raise RuntimeError(f"{type(self).__name__} has no class prompts: call set_class_names(names) first")
        video_emb = self.vision_embed(self.frame_features(video).mean(dim=1))
        return self.logit_scale.exp() * video_emb @ self.class_features.to(video_emb.dtype).t()


class HFTextTokenizer:
    """The tokenizer of a transformers model: the directory's / hub id's own (``AutoTokenizer``), else, for a model
    with OpenAI CLIP's vocabulary, CLIP's BPE (``vidtldr_pl.text.clip_tokenize``, open_clip's tokenizer)."""

    def __init__(self, source: str | None, vocab_size: int | None, context_length: int) -> None:
        self.source, self.vocab_size, self.context_length = source, vocab_size, context_length
        self._tok: Any = None

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """texts -> (ids (K, L), mask (K, L)) long."""
        if self._tok is None and self.source is not None:
            try:
                from transformers import AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(self.source)
            except (OSError, ValueError, TypeError):
                self._tok = False
        if self._tok:
            out = self._tok(texts, padding="max_length", truncation=True, max_length=self.context_length,
                            return_tensors="pt")
            mask = out.get("attention_mask")
            return out["input_ids"], mask if mask is not None else torch.ones_like(out["input_ids"])
        if self.vocab_size == CLIP_VOCAB_SIZE:
            from ..text.clip_tokenizer import clip_tokenize

            ids = clip_tokenize(texts, self.context_length)
            return ids, (ids != 0).long()
        raise UsageError(f"{self.source}: no tokenizer files next to the model (save its tokenizer with "
                         "tokenizer.save_pretrained into the same directory) and its vocabulary is not CLIP's")


def _hf_text_tokenizer(model: nn.Module, source: str | None) -> HFTextTokenizer:
    text = getattr(model.config, "text_config", model.config)
    return HFTextTokenizer(source, getattr(text, "vocab_size", None), int(getattr(text, "max_position_embeddings", 77)))


class HFCLIPDualEncoder(CLIPDualEncoder):
    """transformers ``CLIPModel`` / ``SiglipModel`` (anything with ``get_image_features`` / ``get_text_features``)."""

    def __init__(self, model: nn.Module, source: str | None = None) -> None:
        super().__init__(model)
        self._tokenizer = _hf_text_tokenizer(model, source)

    def image_features(self, images: Tensor) -> Tensor:
        return pooled_of(self.model.get_image_features(pixel_values=images))

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        return pooled_of(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self._tokenizer(texts)


class OpenCLIPDualEncoder(CLIPDualEncoder):
    """open_clip ``CLIP`` / ``CustomTextCLIP``: ``encode_image`` / ``encode_text`` and ``get_tokenizer(name)``."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__(model)
        self.name = name
        self._tokenizer: Any = None

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """ids (B, L), L at most the model's context length (shorter ids, e.g. a DataModule's ``max_txt_len``, are
        padded with 0: the causal tower pools at the end-of-text token, before the padding)."""
        context = getattr(self.model, "context_length", None)
        if context is not None and input_ids.shape[1] != context:
            if input_ids.shape[1] > context:
                raise UsageError(f"open_clip:{self.name}: text of {input_ids.shape[1]} tokens, the model reads at "
                                 f"most {context} (set the DataModule's max_txt_len <= {context})")
            input_ids = F.pad(input_ids, (0, context - input_ids.shape[1]))
        return self.model.encode_text(input_ids)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.name)
        ids = self._tokenizer(texts, context_length=getattr(self.model, "context_length", None) or 77)
        return ids, (ids != 0).long()


class XCLIPZeroShot(_PromptClassifier):
    """transformers ``XCLIPModel`` as a ``ZeroShotClassifier``: video (B, 3, T, H, W) -> its ``logits_per_video``
    (B, K) against the class prompts (tokenised once by ``set_class_names``; the model conditions them on each
    video)."""

    implements = (ZeroShotClassifier,)

    def __init__(self, model: nn.Module, source: str | None = None) -> None:
        super().__init__()
        self.model = model
        self._tokenizer = _hf_text_tokenizer(model, source)
        self.register_buffer("prompt_ids", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("prompt_mask", torch.empty(0, dtype=torch.long), persistent=False)

    def set_class_names(self, names: Sequence[str], template: str = PROMPT_TEMPLATE) -> Tensor:
        """Tokenise ``template.format(name)`` for every class; returns the ids (K, L)."""
        ids, mask = self._tokenizer(self._prompts(names, template))
        device = self.model.logit_scale.device
        self.prompt_ids, self.prompt_mask = ids.to(device), mask.to(device)
        self.class_names = list(names)
        return self.prompt_ids

    def forward(self, video: Tensor) -> Tensor:
        if self.prompt_ids.numel() == 0:
            raise RuntimeError("XCLIPZeroShot has no class prompts: call set_class_names(names) first")
        out = self.model(input_ids=self.prompt_ids, attention_mask=self.prompt_mask,
                         pixel_values=video.transpose(1, 2))
        return out.logits_per_video


def _wrap_transformers(model: nn.Module, source: str | None) -> nn.Module:
    name = type(model).__name__
    if name.endswith("ForVideoClassification"):
        return VideoClassifierWrapper(model)
    if name == "XCLIPModel":
        return XCLIPZeroShot(model, source)
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return HFCLIPDualEncoder(model, source)
    if name.endswith("ForImageClassification"):
        return FrameClassifier(model)
    if getattr(model.config, "model_type", "") in VIDEO_MODEL_TYPES:
        return model  # a video backbone without a head: the library model itself (grafted)
    return FrameFeatures(model)


def wrap(model: nn.Module, source: str | None = None) -> nn.Module:
    """The wrapper the tasks use for a library model (see the module docstring), with the merge contract grafted
    onto its encoders (merging off). source: the ``hf:`` directory / hub id or the open_clip name (tokenizers).
    Raises ``UnsupportedModelError`` (one line) for a model no family adapter covers."""
    library = type(model).__module__.split(".")[0]
    spec = source.split(":", 1)[1] if source and ":" in source else source
    if library == "transformers":
        wrapped = _wrap_transformers(model, spec)
    elif library == "timm":
        wrapped = FrameClassifier(model) if getattr(model, "num_classes", 0) else FrameFeatures(model)
    elif library == "open_clip" and hasattr(model, "encode_image") and hasattr(model, "encode_text"):
        wrapped = OpenCLIPDualEncoder(model, spec or "ViT-B-16")
    else:
        wrapped = model
    adapt(model)  # the library model: a refusal names its class; its encoders are the wrapper's
    return wrapped


__all__ = ["CLIPDualEncoder", "FrameClassifier", "FrameFeatures", "HFCLIPDualEncoder", "HFTextTokenizer",
           "OpenCLIPDualEncoder", "VideoClassifierWrapper", "XCLIPZeroShot", "frames_of", "logits_of", "pooled_of",
           "wrap"]
