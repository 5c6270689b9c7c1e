"""UMT video question answering (official ``UMT_QA``, ``multi_modality/models/umt_qa.py``).

* ``vision_encoder``: the UMT ViT **without** ``pool_norm``; every token after the final norm is kept (B, N', Dv)
  (fewer after merging).
* ``text_encoder``: the UMT BERT; the question runs through every layer, cross-attending to the video tokens from
  ``fusion_layer`` on (all-ones video mask, no size bias).
* ``text_decoder``: a BERT LM-head decoder (``bert.*`` + ``cls.predictions.*``) with causal self-attention and
  cross-attention to the question states in every layer: ``num_layers - fusion_layer`` layers (3 for B, 5 for L).

Answers are not generated: :meth:`UMTQA.rank_answers` ranks a fixed answer list exactly as the official
``rank_answer`` (top k by first-token probability, re-scored by the summed sequence NLL, the first token counted twice,
softmax over the k). Presets ``umt_qa_b16``, ``umt_qa_l16``, ``umt_qa_tiny``, ``umt_qa_demo`` (registry task "qa";
the decorated functions at the end).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError
from ..checkpoint import LoadReport, load_state_into, read_state_dict, strip_prefix
from ..interfaces import VideoQAModel
from ..layers import ViTEncoder, init_vit_weights
from ..registry import register_model, resolve_checkpoint
from .text import MASK_VALUE, TextEncoderConfig, UMTTextEncoder, extended_attention_mask
from .vision import VisionConfig

__all__ = ["AnswerDecoder", "QAVisionEncoder", "UMTQA", "UMTQAConfig",
           "init_qa_from_umt", "load_umt_qa_checkpoint", "qa_state_from_umt", "rerank_topk"]

# Keys of official QA files the model has no use for (saved with the frozen CLIP teacher): dropped and reported.
QA_IGNORED_PREFIXES = ("clip_teacher.",)


@dataclass
class UMTQAConfig:
    """A UMT-QA model. decoder_layers: None = ``text.num_layers - text.fusion_layer`` (official)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig.bert_base)
    decoder_layers: int | None = None
    max_q_len: int = 25
    max_a_len: int = 5

    @property
    def num_decoder_layers(self) -> int:
        return self.decoder_layers if self.decoder_layers is not None else self.text.num_layers - self.text.fusion_layer

    def decoder_config(self) -> TextEncoderConfig:
        """The decoder's BERT: the text encoder's sizes, cross-attention (to question states) in every layer."""
        return replace(self.text, num_layers=self.num_decoder_layers, fusion_layer=0, encoder_width=self.text.hidden_size)


class QAVisionEncoder(nn.Module):
    """The official QA ``vision_encoder``: only ``encoder`` (patch_embed, blocks, final norm); no pool_norm."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)
        self.apply(init_vit_weights)

    def forward(self, video: Tensor) -> Tensor:
        """video: (B, 3, T, H, W) -> all tokens (B, N', D)."""
        return self.encoder(video, self.encoder.new_merge_state())  # the state passed: EncoderStats reads it


class PredictionTransform(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    """BERT ``cls.predictions``: transform, then ``decoder`` (tied to the word embeddings) + ``bias``."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias  # as HF: both names in the state dict, one tensor

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class LMHead(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.predictions = LMPredictionHead(cfg)


class AnswerDecoder(nn.Module):
    """The official ``text_decoder`` (``BertLMHeadModel``): ``bert`` (embeddings + layers with causal self-attention
    and cross-attention) and ``cls`` (LM head, output weights tied to the word embeddings)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.bert = UMTTextEncoder(cfg)
        self.cls = LMHead(cfg)
        self.cls.apply(UMTTextEncoder._init_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor, states: Tensor, states_mask: Tensor) -> Tensor:
        """input_ids / attention_mask (B, L); states (B, Lq, D) question states, states_mask (B, Lq)
        -> logits (B, L, V). Position i sees tokens <= i (causal) that are not padding."""
        hidden = self.bert.embeddings(input_ids)
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        visible = causal[None] & attention_mask[:, None, :].bool()  # (B, L, L)
        add_mask = torch.zeros(visible.shape, dtype=hidden.dtype, device=hidden.device)
        add_mask = add_mask.masked_fill(~visible, MASK_VALUE)[:, None]  # (B, 1, L, L)
        states_add = extended_attention_mask(states_mask, hidden.dtype)
        for layer in self.bert.encoder.layer:
            hidden = layer(hidden, add_mask, states, states_add)
        return self.cls.predictions(hidden)

    def sequence_nll(self, input_ids: Tensor, attention_mask: Tensor, states: Tensor, states_mask: Tensor) -> Tensor:
        """Summed next-token NLL of each sequence (targets ``input_ids[:, 1:]``, padding excluded, no smoothing):
        the official ``BertLMHeadModel`` loss with ``reduction="none"``. Returns (B,)."""
        logits = self(input_ids, attention_mask, states, states_mask)[:, :-1].float()
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (B, L-1)
        return nll.sum(1)


def rerank_topk(first_probs: Tensor, seq_nll: Tensor) -> Tensor:
    """Official re-scoring: ``softmax_k(log p(first token) - NLL(sequence))``; the NLL already contains the first
    token, so it is counted twice (reproduced on purpose).

    first_probs (Q, k) first-token probabilities of the kept candidates; seq_nll (Q, k) -> probabilities (Q, k).
    """
    return torch.softmax(first_probs.log() - seq_nll, dim=1)


class UMTQA(nn.Module):
    """UMT video QA. Videos (B, T, 3, H, W); questions / answers tokenized (``[CLS]`` first)."""

    implements = (VideoQAModel,)

    def __init__(self, cfg: UMTQAConfig) -> None:
        super().__init__()
        if cfg.text.encoder_width != cfg.vision.embed_dim:
            cfg = replace(cfg, text=replace(cfg.text, encoder_width=cfg.vision.embed_dim))
        self.cfg = cfg
        self.vision_encoder = QAVisionEncoder(cfg.vision)
        self.text_encoder = UMTTextEncoder(cfg.text)
        self.text_decoder = AnswerDecoder(cfg.decoder_config())

    def encode_vision(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, 3, H, W) -> (all tokens (B, N', Dv), their unweighted mean (B, Dv)); the question encoder
        reads the tokens."""
        encoder = self.vision_encoder.encoder
        state = encoder.new_merge_state()
        tokens = encoder(video.permute(0, 2, 1, 3, 4), state)
        state.refuse_padding("UMT-QA's question encoder and answer decoder")
        return tokens, tokens.mean(dim=1)

    def encode_question(self, video_tokens: Tensor, q_ids: Tensor, q_mask: Tensor) -> Tensor:
        """video_tokens (B, N', Dv), question ids / mask (B, Lq) -> question states (B, Lq, Dt) (all text layers,
        cross-attention to the video from the fusion layer on)."""
        return self.text_encoder(q_ids, q_mask, mode="multi_modal", encoder_hidden_states=video_tokens)

    def answer_loss(self, states: Tensor, q_mask: Tensor, a_ids: Tensor, a_mask: Tensor, counts: Tensor,
                    weights: Tensor) -> Tensor:
        """Official training loss: ``sum(weight * NLL(answer)) / B``.

        states (B, Lq, D), q_mask (B, Lq); a_ids / a_mask (A, La): every answer of the batch in question order;
        counts (B,): answers per question (sum A); weights (A,).
        """
        states_rep = states.repeat_interleave(counts, dim=0)
        mask_rep = q_mask.repeat_interleave(counts, dim=0)
        nll = self.text_decoder.sequence_nll(a_ids, a_mask, states_rep, mask_rep)
        return (weights.to(nll.dtype) * nll).sum() / states.shape[0]

    @torch.no_grad()
    def rank_answers(self, states: Tensor, q_mask: Tensor, a_ids: Tensor, a_mask: Tensor, k: int = 128,
                     chunk: int | None = None) -> tuple[Tensor, Tensor]:
        """Official ``rank_answer``.

        states (Q, Lq, D), q_mask (Q, Lq); a_ids / a_mask (A, La) the tokenized answer list (``a_ids[:, 0]`` = BOS).
        1. decoder on BOS: softmax of the first step's logits read at every answer's first token; keep the top k;
        2. sequence NLL of each kept answer; 3. ``rerank_topk``.
        Returns (answer indices (Q, k), probabilities (Q, k)), best first. chunk: questions per decoder call.
        """
        q, a = states.shape[0], a_ids.shape[0]
        k = min(k, a)
        bos = a_ids[:1, :1].expand(q, 1)
        logits = self.text_decoder(bos, torch.ones_like(bos), states, q_mask)[:, 0].float()
        first_probs = torch.softmax(logits, dim=1).index_select(1, a_ids[:, 1])  # (Q, A)
        topk_probs, topk_ids = first_probs.topk(k, dim=1)
        chunk = chunk or max(1, 4096 // k)
        nll = []
        for s in range(0, q, chunk):
            ids = topk_ids[s:s + chunk]
            n = ids.shape[0]
            nll.append(self.text_decoder.sequence_nll(
                a_ids[ids.reshape(-1)], a_mask[ids.reshape(-1)],
                states[s:s + chunk].repeat_interleave(k, 0), q_mask[s:s + chunk].repeat_interleave(k, 0)).view(n, k))
        probs = rerank_topk(topk_probs, torch.cat(nll))
        probs, order = probs.topk(k, dim=1)
        return topk_ids.gather(1, order), probs

    def init_from_pretrained(self, path: str) -> None:
        """Fine-tuning's start: ``init_qa_from_umt`` from a UMT pretraining / retrieval file or ``builtin:<name>``."""
        init_qa_from_umt(self, resolve_checkpoint(path))


def load_umt_qa_checkpoint(model: nn.Module, path: str, strict: bool = True) -> LoadReport:
    """Load an official UMT-QA file (``model`` entry or a bare state dict; .pth / .safetensors) into a UMTQA.

    ``module.`` is stripped; ``clip_teacher.*`` is dropped and listed in ``report.ignored``; everything else must
    match exactly under strict (missing / unexpected / wrong-shape keys named in the CheckpointError)."""
    state = strip_prefix(read_state_dict(path), "module.")
    ignored = sorted(k for k in state if k.startswith(QA_IGNORED_PREFIXES))
    state = {k: v for k, v in state.items() if not k.startswith(QA_IGNORED_PREFIXES)}
    report = load_state_into(model, state, str(path), strict)
    report.ignored = ignored
    return report


# Keys of a UMT pretraining / retrieval file that a QA model has no use for (dropped and reported).
PRETRAIN_IGNORED_PREFIXES = ("clip_teacher.", "vision_encoder.clip_decoder.", "vision_encoder.pool_norm.",
                             "vision_proj.", "text_proj.", "itm_head.", "temp")


def qa_state_from_umt(state: dict[str, Tensor], fusion_layer: int) -> tuple[dict[str, Tensor], list[str]]:
    """The official fine-tuning start of UMT-QA from a UMT pretraining (``text_encoder.bert.*`` + MLM head
    ``text_encoder.cls.*``) or retrieval (``text_encoder.*``) file, as ``shared_utils.setup_model`` does when training:
    the text encoder keeps every layer ("bert." removed); the decoder gets the encoder's embeddings, its layers
    ``fusion_layer..`` renumbered from 0, and the MLM head as ``text_decoder.cls.*``.
    Returns (state in the QA layout, ignored keys)."""
    state = strip_prefix(state, "module.")
    ignored = sorted(k for k in state if k.startswith(PRETRAIN_IGNORED_PREFIXES))
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(PRETRAIN_IGNORED_PREFIXES):
            continue
        if not key.startswith("text_encoder."):
            out[key] = value
            continue
        rest = key[len("text_encoder."):]
        rest = rest[len("bert."):] if rest.startswith("bert.") else rest
        if rest.startswith("cls."):
            out["text_decoder." + rest] = value
            continue
        out["text_encoder." + rest] = value
        if rest.startswith("embeddings."):
            out["text_decoder.bert." + rest] = value
        elif rest.startswith("encoder.layer."):
            parts = rest.split(".")
            layer = int(parts[2])
            if layer >= fusion_layer:
                parts[2] = str(layer - fusion_layer)
                out["text_decoder.bert." + ".".join(parts)] = value
    return out, ignored


def init_qa_from_umt(model: UMTQA, path: str) -> LoadReport:
    """Initialise a UMTQA for fine-tuning from a UMT pretraining / retrieval file (``qa_state_from_umt``).

    Every tensor of the model must come from the file except the decoder's LM head when the file has none (a
    retrieval file; the head then stays as initialised and is listed in ``report.missing``): anything else missing,
    unexpected or of the wrong shape raises a CheckpointError. The decoder layers beyond the encoder's fusion layers
    (none for B / L) would also be missing and raise."""
    state, ignored = qa_state_from_umt(read_state_dict(path), model.cfg.text.fusion_layer)
    report = load_state_into(model, state, str(path), strict=False)
    report.ignored = ignored
    bad_missing = [k for k in report.missing if not k.startswith("text_decoder.cls.")]
    if bad_missing or report.unexpected or report.mismatched:
        raise CheckpointError("refusing to initialise UMT-QA from a file that does not fit\n" + report.describe())
    return report


# ------------------------------------------------------------------------------------------------------ presets
# overrides: VisionConfig fields (num_frames=8, attention="explicit", ...)
@register_model(loader=load_umt_qa_checkpoint, num_frames=12, img_size=224, task="qa",
                description="UMT-QA ViT-B/16 (all video tokens, BERT-base question encoder, 3-layer answer decoder)")
def umt_qa_b16(**overrides: Any) -> UMTQA:
    return UMTQA(UMTQAConfig(VisionConfig.vit_b16(**overrides), TextEncoderConfig.bert_base(encoder_width=768)))


@register_model(loader=load_umt_qa_checkpoint, num_frames=12, img_size=224, task="qa",
                description="UMT-QA ViT-L/16 (all video tokens, BERT-large question encoder, 5-layer answer decoder)")
def umt_qa_l16(**overrides: Any) -> UMTQA:
    return UMTQA(UMTQAConfig(VisionConfig.vit_l16(**overrides), TextEncoderConfig.bert_large(encoder_width=1024)))


@register_model(loader=load_umt_qa_checkpoint, num_frames=4, img_size=64, task="qa",
                description="a tiny UMT-QA with the same classes, for tests")
def umt_qa_tiny(**overrides: Any) -> UMTQA:
    """Same classes, tiny sizes (tests): 4 vision blocks x 64, 4 text layers (fusion from 2), 2 decoder layers."""
    vision = VisionConfig(**{"embed_dim": 64, "depth": 4, "num_heads": 4, **overrides})
    text = TextEncoderConfig.tiny(encoder_width=vision.embed_dim)
    return UMTQA(UMTQAConfig(vision, text))


# README "The QA demo" says how its weights were trained
@register_model(loader=load_umt_qa_checkpoint, num_frames=8, img_size=96, task="qa",
                builtin_weights={"umt_qa_demo_synthetic": "umt_qa_demo_synthetic.safetensors"},
                description="the demo-size UMT-QA for the synthetic QA benchmark (configs/demo_qa_umt.yaml); weights "
                            "builtin:umt_qa_demo_synthetic")
def umt_qa_demo(**overrides: Any) -> UMTQA:
    """The demo size (configs/demo_qa_umt.yaml): umt_demo's encoders (6 x 192, 8 frames at 96 px; 2 text + 2 fusion
    layers over a 64-word vocabulary), a 2-layer answer decoder."""
    vision = VisionConfig(**{"embed_dim": 192, "depth": 6, "num_heads": 3, **overrides})
    text = TextEncoderConfig(vocab_size=64, hidden_size=192, num_layers=4, num_heads=3, intermediate_size=768,
                             fusion_layer=2, encoder_width=vision.embed_dim, max_position_embeddings=64)
    return UMTQA(UMTQAConfig(vision, text))
