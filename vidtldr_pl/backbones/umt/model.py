"""UMT for video-text retrieval: vision encoder, BERT text encoder with fusion layers, ITC projections, ITM head.

Module names are those of the official checkpoints (``vision_encoder``, ``text_encoder``, ``vision_proj``,
``text_proj``, ``itm_head``, ``temp``). Presets in ``UMT_CONFIGS``, registered as ``umt_b16``, ``umt_l16``,
``umt_tiny``, ``umt_demo``; build with ``vidtldr_pl.backbones.create_model(name)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import WEIGHTS_DIR, create_model, register_model  # noqa: F401  (WEIGHTS_DIR re-exported)
from ..registry import resolve_checkpoint as registry_resolve
from .text import TextEncoderConfig, UMTTextEncoder
from .vision import VisionConfig, VisionTransformer


@dataclass
class UMTConfig:
    """A whole UMT retrieval model. embed_dim: width of the ITC space."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig.bert_base)
    embed_dim: int = 512
    temp: float = 0.07


def _b16(**kw: Any) -> UMTConfig:
    return UMTConfig(VisionConfig.vit_b16(**kw), TextEncoderConfig.bert_base(encoder_width=768), embed_dim=512)


def _l16(**kw: Any) -> UMTConfig:
    return UMTConfig(VisionConfig.vit_l16(**kw), TextEncoderConfig.bert_large(encoder_width=1024), embed_dim=768)


def _tiny(**kw: Any) -> UMTConfig:
    """A small UMT with the same classes, for tests and CPU demos."""
    vision = VisionConfig(**{"embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 64, "num_frames": 4, **kw})
    text = TextEncoderConfig(
        vocab_size=128, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128, fusion_layer=2,
        encoder_width=vision.embed_dim, max_position_embeddings=64,
    )
    return UMTConfig(vision, text, embed_dim=32)


def _demo(**kw: Any) -> UMTConfig:
    """The embedded demo model (configs/demo_umt.yaml): 6 blocks x 192 wide, 8 frames at 96 px (288 tokens);
    a 4-layer text encoder (2 text + 2 fusion) over the synthetic benchmark's small vocabulary."""
    vision = VisionConfig(**{"embed_dim": 192, "depth": 6, "num_heads": 3, "img_size": 96, "num_frames": 8, **kw})
    text = TextEncoderConfig(
        vocab_size=64, hidden_size=192, num_layers=4, num_heads=3, intermediate_size=768, fusion_layer=2,
        encoder_width=vision.embed_dim, max_position_embeddings=64,
    )
    return UMTConfig(vision, text, embed_dim=128)


UMT_CONFIGS = {"umt_b16": _b16, "umt_l16": _l16, "umt_tiny": _tiny, "umt_demo": _demo}


def _temp_to_scalar(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    key = prefix + "temp"
    if key in state_dict and state_dict[key].numel() == 1:
        state_dict[key] = state_dict[key].reshape(())


def _temp_from_scalar(state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    key = prefix + "temp"
    if key in state_dict and state_dict[key].numel() == 1:
        state_dict[key] = state_dict[key].reshape(1)


class UMT(nn.Module):
    """UMT retrieval model. Videos are (B, T, 3, H, W) as the official ``encode_vision`` takes them."""

    def __init__(self, cfg: UMTConfig) -> None:
        super().__init__()
        if cfg.text.encoder_width != cfg.vision.embed_dim:
            cfg = replace(cfg, text=replace(cfg.text, encoder_width=cfg.vision.embed_dim))
        self.cfg = cfg
        self.vision_encoder = VisionTransformer(cfg.vision)
        self.text_encoder = UMTTextEncoder(cfg.text)
        self.vision_proj = nn.Linear(cfg.vision.embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text.hidden_size, cfg.embed_dim)
        self.itm_head = nn.Linear(cfg.text.hidden_size, 2)
        # (1,) and not 0-d: DeepSpeed broadcasts / partitions parameters as uint8 views, impossible for a 0-d tensor.
        # State dicts keep the official 0-d ``temp`` (hooks below), so checkpoints load and export unchanged.
        self.temp = nn.Parameter(torch.tensor([cfg.temp]))
        self._register_state_dict_hook(_temp_to_scalar)
        self._register_load_state_dict_pre_hook(_temp_from_scalar)

    def encode_vision(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video: (B, T, 3, H, W) -> (tokens (B, N', Dv) for ITM, pooled (B, Dv))."""
        return self.vision_encoder(video.permute(0, 2, 1, 3, 4))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> text-only hidden states (B, L, Dt)."""
        return self.text_encoder.forward_text(input_ids, attention_mask)

    def vision_embed(self, pooled: Tensor) -> Tensor:
        """pooled (B, Dv) -> L2-normalised ITC embedding (B, E)."""
        return F.normalize(self.vision_proj(pooled), dim=-1)

    def text_embed(self, text_hidden: Tensor) -> Tensor:
        """text hidden (B, L, Dt) -> L2-normalised ITC embedding of the [CLS] token (B, E)."""
        return F.normalize(self.text_proj(text_hidden[:, 0]), dim=-1)

    def itm_logits(self, text_hidden: Tensor, text_mask: Tensor, video_tokens: Tensor | None,
                   memory: list[tuple[Tensor, Tensor]] | None = None, memory_index: Tensor | None = None) -> Tensor:
        """Fusion layers over (text, video) pairs -> ITM logits (B, 2); [:, 1] is the match score.

        text_hidden (B, L, Dt), text_mask (B, L), video_tokens (B, N', Dv) (all-ones video mask, no size bias);
        or memory = ``text_encoder.fusion_memory(video_tokens)`` (batch B, or 1 for one video vs B texts; or G
        videos with memory_index (B,) naming each text's video).
        """
        fused = self.text_encoder.forward_fusion(text_hidden, text_mask, video_tokens, memory=memory,
                                                 memory_index=memory_index)
        return self.itm_head(fused[:, 0])


BUILTIN_WEIGHTS = {
    # name -> (file under vidtldr_pl/weights, preset); see README "The embedded demo" for how it was trained
    "umt_demo_synthetic": ("umt_demo_synthetic.safetensors", "umt_demo"),
}

_PRESET_INPUT = {"umt_b16": (12, 224), "umt_l16": (12, 224), "umt_tiny": (4, 64), "umt_demo": (8, 96)}
_DESCRIPTIONS = {
    "umt_b16": "UMT ViT-B/16 retrieval model (vision + BERT-base text with fusion layers, ITC + ITM)",
    "umt_l16": "UMT ViT-L/16 retrieval model (vision + BERT-large text with fusion layers, ITC + ITM)",
    "umt_tiny": "a tiny UMT with the same classes, for tests",
    "umt_demo": "the embedded demo UMT (6 x 192, 8 frames at 96 px); weights builtin:umt_demo_synthetic",
}


def _register_presets() -> None:
    from .checkpoint import load_umt_checkpoint

    for name, preset in UMT_CONFIGS.items():
        frames, size = _PRESET_INPUT[name]
        weights = {w: f for w, (f, p) in BUILTIN_WEIGHTS.items() if p == name}

        def build(_preset=preset, **overrides: Any) -> UMT:
            return UMT(_preset(**overrides))

        register_model(name, loader=load_umt_checkpoint, num_frames=frames, img_size=size, task="retrieval",
                       builtin_weights=weights, description=_DESCRIPTIONS[name])(build)


_register_presets()


def resolve_checkpoint(checkpoint: str) -> str:
    """``builtin:<name>`` -> the weights file shipped in vidtldr_pl/weights; other paths unchanged."""
    return registry_resolve(checkpoint)


def create_umt(name: str = "umt_b16", checkpoint: str | None = None, strict: bool = True, **vision_overrides: Any) -> UMT:
    """Build a UMT preset ("umt_b16", "umt_l16", "umt_tiny", "umt_demo"), optionally loading an official checkpoint
    (same as ``create_model`` restricted to UMT names).

    checkpoint: a file (.pth / .safetensors) or ``builtin:<name>`` (weights shipped with the project).
    vision_overrides: VisionConfig fields, e.g. num_frames=8, attention="explicit", ckpt_num_frames=8.
    """
    if name not in UMT_CONFIGS:
        raise ValueError(f"unknown UMT preset {name!r}; choose one of {sorted(UMT_CONFIGS)}")
    return create_model(name, checkpoint=checkpoint, strict=strict, **vision_overrides)
