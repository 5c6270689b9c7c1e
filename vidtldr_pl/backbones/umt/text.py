"""UMT text encoder: ALBEF-style BERT (``xbert``) with cross-attention fusion layers, pure PyTorch.

Layers ``[0, fusion_layer)`` are plain post-LN BERT layers (the "text" encoder); layers
``[fusion_layer, num_layers)`` additionally cross-attend to vision tokens (the "fusion" encoder used by
the ITM head). Module names reproduce the official checkpoint keys under ``text_encoder.`` exactly
(``embeddings.*``, ``encoder.layer.{i}.{attention,crossattention,intermediate,output}.*``); there is no
pooler and no MLM head.

Masks follow the ALBEF convention: a 0/1 mask becomes the additive ``(1 - mask) * -10000`` for both the
text (self-attention) and the vision tokens (cross-attention). Note: the official xbert builds the *vision*
mask with transformers' ``invert_attention_mask`` (``torch.finfo(float32).min`` in transformers 4.32.1, the
pinned version). Masked tokens get exactly zero weight either way; the two differ only when *every* vision
token of a sample is masked (official: uniform weights; here: as if none were masked). The official
retrieval/ITM paths always pass an all-ones vision mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TextEncoderConfig", "UMTTextEncoder", "extended_attention_mask"]

MASK_VALUE = -10000.0


@dataclass
class TextEncoderConfig:
    """Hyper-parameters of the UMT/ALBEF BERT text encoder (defaults: BERT-base, fusion from layer 9)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    fusion_layer: int = 9
    encoder_width: int = 768  # width of the vision tokens (cross-attention key/value input)
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int | None = 0  # BERT's [PAD]; the official word embedding uses it as padding_idx

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` if the configuration is inconsistent."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "encoder_width", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextEncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.fusion_layer <= self.num_layers:
            raise ValueError(
                f"TextEncoderConfig.fusion_layer must be in [0, num_layers={self.num_layers}] "
                f"(layers >= fusion_layer get cross-attention), got {self.fusion_layer}"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"TextEncoderConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"TextEncoderConfig.pad_token_id={self.pad_token_id} is outside [0, vocab_size={self.vocab_size})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TextEncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_text_layers(self) -> int:
        return self.fusion_layer

    @property
    def num_fusion_layers(self) -> int:
        return self.num_layers - self.fusion_layer

    @classmethod
    def bert_base(cls, encoder_width: int = 768, **overrides: Any) -> "TextEncoderConfig":
        """BERT-base (UMT-B/16): 768 wide, 12 layers, 12 heads, fusion layers 9-11."""
        return replace(cls(encoder_width=encoder_width), **overrides)

    @classmethod
    def tiny(cls, encoder_width: int = 64, **overrides: Any) -> "TextEncoderConfig":
        """4 layers x 64 (fusion from 2), a 128-word vocabulary: the tests' tiny presets."""
        return cls(**{"vocab_size": 128, "hidden_size": 64, "num_layers": 4, "num_heads": 4, "intermediate_size": 128,
                      "fusion_layer": 2, "encoder_width": encoder_width, "max_position_embeddings": 64, **overrides})

    @classmethod
    def bert_large(cls, encoder_width: int = 1024, **overrides: Any) -> "TextEncoderConfig":
        """BERT-large (UMT-L/16): 1024 wide, 24 layers, 16 heads, fusion layers 19-23."""
        base = cls(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                   fusion_layer=19, encoder_width=encoder_width)
        return replace(base, **overrides)


def extended_attention_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, N) 0/1 mask -> (B, 1, 1, N) additive mask ``(1 - mask) * -10000`` in ``dtype``."""
    if mask.dim() != 2:
        raise ValueError(f"attention masks must have shape (B, N), got {tuple(mask.shape)}")
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASK_VALUE


class BertEmbeddings(nn.Module):
    """word + token_type (all 0) + absolute position -> LayerNorm -> dropout."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.register_buffer(
            "position_ids", torch.arange(cfg.max_position_embeddings, dtype=torch.long).unsqueeze(0),
            persistent=True,
        )

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, D)."""
        seq_len = input_ids.shape[1]
        if seq_len > self.position_ids.shape[1]:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings={self.position_ids.shape[1]}"
            )
        token_type_ids = torch.zeros_like(input_ids)
        emb = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        emb = emb + self.position_embeddings(self.position_ids[:, :seq_len])
        return self.dropout(self.LayerNorm(emb))


class BertSelfAttention(nn.Module):
    """Multi-head attention projections; key/value read ``kv_width``-wide inputs (vision for cross-attn)."""

    def __init__(self, cfg: TextEncoderConfig, kv_width: int) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.dropout_p = cfg.attention_dropout
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def key_value(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """kv (B, N, Dkv) -> keys and values (B, H, N, hd); for cross-attention they depend on the video only."""
        return self._split(self.key(kv)), self._split(self.value(kv))

    def forward(self, hidden: Tensor, kv: Tensor | None, add_mask: Tensor,
                memory: tuple[Tensor, Tensor] | None = None, memory_index: Tensor | None = None) -> Tensor:
        """hidden (B, L, D), kv (B, N, Dkv), add_mask (B or 1, 1, 1, N) additive -> context (B, L, D).

        memory: precomputed ``key_value(kv)`` (batch B or 1, broadcast over the queries) used instead of kv.
        memory_index: (B,) long, row b attends to ``memory[:][memory_index[b]]`` (memory of batch G: the keys /
            values of G videos shared by the B rows, never copied per row; add_mask then has batch 1).
        """
        q = self._split(self.query(hidden))
        k, v = memory if memory is not None else self.key_value(kv)
        dropout_p = self.dropout_p if self.training else 0.0
        if memory_index is not None:
            ctx = self._grouped_attention(q, k, v, add_mask.to(q.dtype), memory_index, dropout_p)
        else:
            if k.shape[0] != q.shape[0]:
                k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask.to(q.dtype), dropout_p=dropout_p)
        b, _, n, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)

    @staticmethod
    def _grouped_attention(q: Tensor, k: Tensor, v: Tensor, add_mask: Tensor, memory_index: Tensor,
                           dropout_p: float) -> Tensor:
        """q (B, H, L, hd) against k / v (G, H, N, hd), row b reading group ``memory_index[b]``: one attention call
        per group, its keys / values broadcast over its rows (the same per-row arithmetic as a (B, H, N, hd) copy)."""
        if memory_index.shape != (q.shape[0],):
            raise ValueError(f"memory_index must have shape ({q.shape[0]},), got {tuple(memory_index.shape)}")
        if add_mask.shape[0] != 1:
            raise ValueError("with memory_index the cross-attention mask must have batch 1 (all-ones vision mask)")
        groups, inverse = torch.unique(memory_index, return_inverse=True)
        if groups.numel() == 1:  # one video for every row: plain broadcast
            g = int(groups[0])
            k_g, v_g = k[g:g + 1].expand(q.shape[0], -1, -1, -1), v[g:g + 1].expand(q.shape[0], -1, -1, -1)
            return F.scaled_dot_product_attention(q, k_g, v_g, attn_mask=add_mask, dropout_p=dropout_p)
        ctx = torch.empty_like(q)
        for j, g in enumerate(groups.tolist()):
            rows = (inverse == j).nonzero().squeeze(1)
            n = rows.numel()
            k_g, v_g = k[g:g + 1].expand(n, -1, -1, -1), v[g:g + 1].expand(n, -1, -1, -1)
            ctx[rows] = F.scaled_dot_product_attention(q[rows], k_g, v_g, attn_mask=add_mask, dropout_p=dropout_p)
        return ctx


class BertSelfOutput(nn.Module):
    """``LayerNorm(dropout(dense(ctx)) + residual)``."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, ctx: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(ctx)) + residual)


class BertAttention(nn.Module):
    """Attention block (``self`` projections + ``output``); self-attention or cross-attention."""

    def __init__(self, cfg: TextEncoderConfig, kv_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden: Tensor, kv: Tensor | None, add_mask: Tensor,
                memory: tuple[Tensor, Tensor] | None = None, memory_index: Tensor | None = None) -> Tensor:
        return self.output(self.self(hidden, kv, add_mask, memory, memory_index), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return F.gelu(self.dense(hidden))  # exact erf GELU


class BertOutput(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, inter: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(inter)) + residual)


class BertLayer(nn.Module):
    """Post-LN BERT layer; with ``has_cross_attention`` a cross-attention block follows self-attention."""

    def __init__(self, cfg: TextEncoderConfig, has_cross_attention: bool) -> None:
        super().__init__()
        self.has_cross_attention = has_cross_attention
        self.attention = BertAttention(cfg, cfg.hidden_size)
        if has_cross_attention:
            self.crossattention = BertAttention(cfg, cfg.encoder_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(
        self,
        hidden: Tensor,
        add_mask: Tensor,
        vision: Tensor | None = None,
        vision_add_mask: Tensor | None = None,
        memory: tuple[Tensor, Tensor] | None = None,
        memory_index: Tensor | None = None,
    ) -> Tensor:
        """hidden (B, L, D), add_mask (B, 1, 1, L); vision (B, N, Dv), vision_add_mask (B, 1, 1, N);
        memory: this layer's precomputed cross-attention keys / values (instead of vision); memory_index: which
        memory entry each row reads (``BertSelfAttention.forward``)."""
        hidden = self.attention(hidden, hidden, add_mask)
        if self.has_cross_attention:
            if (vision is None and memory is None) or vision_add_mask is None:
                raise ValueError("fusion layers need vision tokens (encoder_hidden_states) for cross-attention")
            hidden = self.crossattention(hidden, vision, vision_add_mask, memory, memory_index)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, i >= cfg.fusion_layer) for i in range(cfg.num_layers))


class UMTTextEncoder(nn.Module):
    """UMT/ALBEF BERT text encoder; ``state_dict()`` keys equal the checkpoint's ``text_encoder.*`` keys."""

    def __init__(self, cfg: TextEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else TextEncoderConfig()
        cfg.validate()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT init: N(0, 0.02) for Linear/Embedding weights, zero biases, LayerNorm (1, 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _run_layers(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None,
        start: int,
        end: int,
        vision_tokens: Tensor | None = None,
        vision_mask: Tensor | None = None,
        memory: list[tuple[Tensor, Tensor]] | None = None,
        memory_index: Tensor | None = None,
    ) -> Tensor:
        if memory_index is not None and memory is None:
            raise ValueError("memory_index selects entries of memory: pass memory too")
        if attention_mask is None:
            attention_mask = hidden.new_ones(hidden.shape[:2])
        add_mask = extended_attention_mask(attention_mask, hidden.dtype)
        vision_add_mask = None
        if memory is not None and vision_mask is None:
            vision_mask = hidden.new_ones(1, memory[0][0].shape[2])
        if vision_tokens is not None and vision_mask is None:
            vision_mask = vision_tokens.new_ones(vision_tokens.shape[:2])
        if vision_mask is not None:
            vision_add_mask = extended_attention_mask(vision_mask, hidden.dtype)
        for i, layer in enumerate(self.encoder.layer[start:end]):
            layer_memory = memory[i] if memory is not None else None
            hidden = layer(hidden, add_mask, vision_tokens, vision_add_mask, layer_memory, memory_index)
        return hidden

    def forward_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Text-only encoder: embeddings + layers ``[0, fusion_layer)``.

        input_ids (B, L) long, attention_mask (B, L) 0/1 (None: all ones) -> hidden states (B, L, D).
        """
        hidden = self.embeddings(input_ids)
        return self._run_layers(hidden, attention_mask, 0, self.config.fusion_layer)

    def forward_fusion(
        self,
        text_hidden: Tensor,
        attention_mask: Tensor | None,
        vision_tokens: Tensor | None,
        vision_mask: Tensor | None = None,
        memory: list[tuple[Tensor, Tensor]] | None = None,
        memory_index: Tensor | None = None,
    ) -> Tensor:
        """Fusion layers ``[fusion_layer, num_layers)`` with cross-attention to vision tokens.

        text_hidden (B, L, D) (output of ``forward_text``), attention_mask (B, L) 0/1,
        vision_tokens (B, N, Dv), vision_mask (B, N) 0/1 (None: all ones) -> (B, L, D).
        memory: ``fusion_memory(vision_tokens)`` computed beforehand (batch B, or 1 for one video shared by every
        text), used instead of vision_tokens: the same result without projecting a video's tokens again per text.
        memory_index: (B,) long with a memory of G videos (all-ones vision masks): text b is fused with video
            ``memory_index[b]``, so that the pairs of several videos share one forward without copying each
            video's keys / values per pair.
        """
        return self._run_layers(text_hidden, attention_mask, self.config.fusion_layer,
                                self.config.num_layers, vision_tokens, vision_mask, memory, memory_index)

    def fusion_memory(self, vision_tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """vision_tokens (B, N, Dv) -> per fusion layer the cross-attention keys and values, each (B, H, N, hd)."""
        return [layer.crossattention.self.key_value(vision_tokens)
                for layer in self.encoder.layer[self.config.fusion_layer:]]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        mode: str = "text",
        encoder_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Official-style entry point; returns the last hidden state (B, L, D).

        Input is ``input_ids`` (B, L) (embedded first) or ``encoder_embeds`` (B, L, D) (used as is).
        ``mode``: "text" runs layers ``[0, fusion_layer)``, "fusion" ``[fusion_layer, num_layers)``,
        "multi_modal" all layers. ``encoder_hidden_states`` (B, N, Dv) / ``encoder_attention_mask`` (B, N)
        are the vision tokens and their mask (needed by "fusion" and "multi_modal", ignored by "text").
        """
        if (input_ids is None) == (encoder_embeds is None):
            raise ValueError("pass exactly one of input_ids and encoder_embeds")
        ranges = {
            "text": (0, self.config.fusion_layer),
            "fusion": (self.config.fusion_layer, self.config.num_layers),
            "multi_modal": (0, self.config.num_layers),
        }
        if mode not in ranges:
            raise ValueError(f"mode must be one of {sorted(ranges)}, got {mode!r}")
        start, end = ranges[mode]
        hidden = self.embeddings(input_ids) if input_ids is not None else encoder_embeds
        if mode == "text":
            encoder_hidden_states = encoder_attention_mask = None
        elif encoder_hidden_states is None and end > self.config.fusion_layer:
            raise ValueError(f"mode={mode!r} needs encoder_hidden_states (the vision tokens)")
        return self._run_layers(hidden, attention_mask, start, end, encoder_hidden_states, encoder_attention_mask)
