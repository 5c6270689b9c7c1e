"""UMT for video-text retrieval: vision encoder, BERT text encoder with fusion layers, ITC projections, ITM head.

Module names are those of the official checkpoints (``vision_encoder``, ``text_encoder``, ``vision_proj``,
``text_proj``, ``itm_head``, ``temp``). Presets ``umt_b16``, ``umt_l16``, ``umt_tiny``, ``umt_demo`` (the decorated
functions at the end); build with ``vidtldr_pl.backbones.create_model(name)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..interfaces import FusionModel
from ..registry import register_model
from .checkpoint import load_umt_checkpoint
from .text import TextEncoderConfig, UMTTextEncoder
from .vision import VisionConfig, VisionTransformer

#: why UMT retrieval refuses per-video token counts (its ITM fusion layers would read padding or unequal rows)
NO_PER_VIDEO_COUNTS = ("are not supported with UMT's ITM re-ranking yet (its fusion layers take no video mask): use "
                       "them with classification or dual-encoder retrieval (VideoMAE, ViFi-CLIP)")


@dataclass
class UMTConfig:
    """A whole UMT retrieval model. embed_dim: width of the ITC space."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig.bert_base)
    embed_dim: int = 512
    temp: float = 0.07


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

    implements = (FusionModel,)

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
        """video: (B, T, 3, H, W) -> (tokens (B, N', Dv) for ITM, pooled (B, Dv)). Rows of different token counts
        (rlt, threshold mode) are refused in one line: the fusion layers have no mask for their padding (and the
        retrieval task refuses videos of different counts across batches, ``RetrievalTask``)."""
        tokens, pooled, state = self.vision_encoder(video.permute(0, 2, 1, 3, 4), return_state=True)
        state.refuse_padding("UMT's fusion layers (ITM re-ranking)", NO_PER_VIDEO_COUNTS)
        return tokens, pooled

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
        or memory = ``fusion_memory(video_tokens)`` (batch B, or 1 for one video vs B texts; or G
        videos with memory_index (B,) naming each text's video).
        """
        fused = self.text_encoder.forward_fusion(text_hidden, text_mask, video_tokens, memory=memory,
                                                 memory_index=memory_index)
        return self.itm_head(fused[:, 0])

    def fusion_memory(self, video_tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """video_tokens (G, N', Dv) -> per fusion layer the cross-attention (keys, values) (G, H, N', hd)."""
        return self.text_encoder.fusion_memory(video_tokens)

    def fusion_memory_numel(self, num_tokens: int) -> int:
        """Elements ``fusion_memory`` holds per video of ``num_tokens`` tokens: keys and values of every fusion layer."""
        cfg = self.text_encoder.config
        return (cfg.num_layers - cfg.fusion_layer) * 2 * num_tokens * cfg.hidden_size

    def temperature(self, clamp: bool = False) -> Tensor:
        """``temp`` (1,), the ITC temperature; clamp: first into [0.001, 0.5] in place (the official recipe)."""
        if clamp:
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)
        return self.temp


# ------------------------------------------------------------------------------------------------------ presets
# overrides: VisionConfig fields (num_frames=8, attention="explicit", ckpt_num_frames=8, drop_path_rate=0.1, ...)
@register_model(loader=load_umt_checkpoint, num_frames=12, img_size=224, task="retrieval",
                description="UMT ViT-B/16 retrieval model (vision + BERT-base text with fusion layers, ITC + ITM)")
def umt_b16(**overrides: Any) -> UMT:
    return UMT(UMTConfig(VisionConfig.vit_b16(**overrides), TextEncoderConfig.bert_base(encoder_width=768),
                         embed_dim=512))


@register_model(loader=load_umt_checkpoint, num_frames=12, img_size=224, task="retrieval",
                description="UMT ViT-L/16 retrieval model (vision + BERT-large text with fusion layers, ITC + ITM)")
def umt_l16(**overrides: Any) -> UMT:
    return UMT(UMTConfig(VisionConfig.vit_l16(**overrides), TextEncoderConfig.bert_large(encoder_width=1024),
                         embed_dim=768))


@register_model(loader=load_umt_checkpoint, num_frames=4, img_size=64, task="retrieval",
                description="a tiny UMT with the same classes, for tests")
def umt_tiny(**overrides: Any) -> UMT:
    vision = VisionConfig(**{"embed_dim": 64, "depth": 4, "num_heads": 4, **overrides})
    text = TextEncoderConfig.tiny(encoder_width=vision.embed_dim)
    return UMT(UMTConfig(vision, text, embed_dim=32))


# see README "The embedded demo" for how its weights were trained
@register_model(loader=load_umt_checkpoint, num_frames=8, img_size=96, task="retrieval",
                builtin_weights={"umt_demo_synthetic": "umt_demo_synthetic.safetensors"},
                description="the embedded demo UMT (6 x 192, 8 frames at 96 px); weights builtin:umt_demo_synthetic")
def umt_demo(**overrides: Any) -> UMT:
    """The embedded demo model (configs/demo_umt.yaml): 6 blocks x 192 wide, 8 frames at 96 px (288 tokens);
    a 4-layer text encoder (2 text + 2 fusion) over the synthetic benchmark's small vocabulary."""
    vision = VisionConfig(**{"embed_dim": 192, "depth": 6, "num_heads": 3, **overrides})
    text = TextEncoderConfig(vocab_size=64, hidden_size=192, num_layers=4, num_heads=3, intermediate_size=768,
                             fusion_layer=2, encoder_width=vision.embed_dim, max_position_embeddings=64)
    return UMT(UMTConfig(vision, text, embed_dim=128))
