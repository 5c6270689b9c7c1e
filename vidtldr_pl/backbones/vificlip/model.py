"""ViFi-CLIP (Rasheed et al., CVPR 2023): CLIP ViT-B/16 run per frame, the CLIP text tower, cosine logits.

Architecture (muzairkhattak/ViFi-CLIP ``trainers/vificlip.py`` on OpenAI ``clip/model.py``):
- image tower, per frame: (B, 3, T, H, W) -> the B x T frames are the batch; conv1 16 x 16 without bias -> 196
  patches, the class embedding prepended (197 tokens, CLS first), learned positions, ln_pre, 12 pre-LN blocks
  (packed q | k | v ``in_proj`` with a full bias, QuickGELU, eps 1e-5); ``ln_post(x[:, 0]) @ proj`` is the frame
  embedding, the plain temporal mean the video embedding, then L2 normalisation;
- text tower: token embedding + learned positions, a causal transformer (width 512), ``ln_final``, the EOT
  feature (the argmax id) @ ``text_projection``, L2 normalisation; prompts "a photo of a {class}.";
- logits = exp(logit_scale) x cosine.

Merging runs inside each frame (the frames are the encoder's batch), so tokens_per_layer is per frame; the CLS is
the encoder's prefix token (``num_prefix_tokens = 1``) and ``patch()`` protects it. Whether the CLS row / column
enters vid-TLDR's saliency is the merge method's ``prefix_in_saliency`` option (default True: the official
computation over all tokens, unchanged; False: the saliency over patch tokens only, see ``VidTLDR``).

Checkpoints (``load_vificlip_checkpoint``): ViFi-CLIP files (``module.image_encoder.*``, ``module.text_encoder.*``,
``module.logit_scale``; the ``prompt_learner.complete_text_embeddings`` buffer holds the training prompts' token
embeddings and is dropped, as the official loader does; the pickled yacs config needs the one-time convert path),
OpenAI CLIP / open_clip state dicts (``visual.*``, ``token_embedding``, ...) and HF ``CLIPModel``. A ViFi-CLIP file
has no ``token_embedding``: name an OpenAI / open_clip / HF CLIP file as ``clip_checkpoint`` to take it from there.
Inputs are normalised with the ImageNet mean / std (ViFi-CLIP's, inherited from X-CLIP; not CLIP's own).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError
from ...merging import MergeState
from ..contrastive import LogitScaleHead
from ..checkpoint import LoadReport, load_state_into, read_state_dict, strip_prefix
from ..framewise import FrameViTEncoder, per_video
from ..interfaces import DualEncoder, ZeroShotClassifier
from ..layers import QuickGELU, ViTConfig, init_vit_weights
from ..registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROMPT_TEMPLATE = "a photo of a {}."


class TextBlock(nn.Module):
    """OpenAI CLIP's ResidualAttentionBlock (key names ``ln_1``, ``attn.in_proj_*``, ``mlp.c_fc``, ...)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, L, W); mask: (L, L) additive causal mask."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(TextBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class CLIPTextTower(nn.Module):
    """ids (B, L) with the EOT token the largest id -> projected, unnormalised features (B, E)."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width).normal_(std=0.01))
        self.transformer = TextTransformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim).normal_(std=width ** -0.5))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        n = ids.shape[1]
        if n > self.positional_embedding.shape[0]:
            raise ValueError(f"{n} text tokens exceed the context length {self.positional_embedding.shape[0]}")
        x = self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        mask = torch.full((n, n), float("-inf"), device=ids.device, dtype=x.dtype).triu_(1)
        x = self.ln_final(self.transformer(x, mask))
        eot = x[torch.arange(x.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return eot @ self.text_projection


@dataclass
class ViFiCLIPConfig:
    """vision: ONE frame's ViT (CLS, learned positions, ln_pre, qkv bias, QuickGELU, no final norm: ln_post follows);
    num_frames: frames per clip (32 zero-shot, 16 supervised); embed_dim: the joint space; text_*: the text tower;
    clip_checkpoint: an OpenAI / open_clip / HF CLIP file to take the token embedding from when the main file lacks
    it (a ViFi-CLIP file)."""

    vision: ViTConfig = field(default_factory=lambda: _vision())
    num_frames: int = 32
    embed_dim: int = 512
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    clip_checkpoint: str | None = None


def _vision(**kw: Any) -> ViTConfig:
    base = dict(tubelet_size=1, num_frames=1, class_token=True, pos_embed="learned", pre_norm=True, final_norm=False,
                qkv_bias="qkv", act="quick_gelu", norm_eps=1e-5, patch_bias=False)
    return ViTConfig(**{**base, **kw})


class ViFiCLIP(LogitScaleHead):
    """Dual encoder. ``encode_video``: (B, 3, T, H, W) ImageNet-normalised -> (B, E) unit vectors;
    ``encode_text``: ids (K, L) -> (K, E) unit vectors; ``forward(video)`` -> (B, K) logits against the class
    prompts set with ``set_class_names`` (encoded once, kept as a buffer)."""

    implements = (DualEncoder, ZeroShotClassifier)

    def __init__(self, cfg: ViFiCLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        v = cfg.vision
        self.encoder = FrameViTEncoder(v, cfg.num_frames)
        self.ln_post = nn.LayerNorm(v.embed_dim, eps=v.norm_eps)
        self.proj = nn.Parameter(torch.empty(v.embed_dim, cfg.embed_dim))
        self.text = CLIPTextTower(cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers,
                                  cfg.text_heads, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # log(100), CLIP's trained value
        self._init_vision()
        self.register_buffer("class_features", torch.empty(0, cfg.embed_dim), persistent=False)
        self.class_names: list[str] = []

    def _init_vision(self) -> None:
        """OpenAI CLIP's initialisation (``initialize_parameters``): attention q / k at std width^-0.5, so a
        random model's attention is not uniform (vid-TLDR's min-max saliency is ill-conditioned on uniform maps)."""
        self.encoder.apply(init_vit_weights)
        width, depth = self.cfg.vision.embed_dim, self.cfg.vision.depth
        scale, proj_std = width ** -0.5, width ** -0.5 * (2 * depth) ** -0.5
        nn.init.normal_(self.encoder.cls_token, std=scale)
        nn.init.normal_(self.encoder.pos_embed, std=scale)
        nn.init.normal_(self.proj, std=scale)
        for block in self.encoder.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=scale)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)

    # ------------------------------------------------------------------------------------------------- video
    def frame_features(self, video: Tensor, state: MergeState | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> per-frame embeddings (B, T, E) (ln_post + proj on each frame's CLS)."""
        state = state if state is not None else self.encoder.new_merge_state()
        tokens = self.encoder(video, state)  # (B x T, N', D), CLS first
        return per_video(self.ln_post(tokens[:, 0]) @ self.proj, video.shape[0])

    def encode_video(self, video: Tensor, state: MergeState | None = None) -> Tensor:
        """video: (B, 3, T, H, W) -> (B, E): the temporal mean of the frame embeddings, L2-normalised."""
        return F.normalize(self.frame_features(video, state).mean(dim=1), dim=-1)

    # -------------------------------------------------------------------------------------------------- text
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids: (K, L) CLIP BPE ids -> (K, E) unit vectors (attention_mask is accepted for RetrievalTask and
        unused: the causal tower reads up to EOT)."""
        return F.normalize(self.text(input_ids), dim=-1)

    @torch.no_grad()
    def set_class_names(self, names: Sequence[str], template: str = PROMPT_TEMPLATE, batch_size: int = 256) -> Tensor:
        """Encode ``template.format(name)`` for every class once; kept as ``class_features`` (K, E)."""
        from ...text.clip_tokenizer import clip_tokenize  # the text package loads tokenizers: only when prompted

        ids = clip_tokenize([template.format(n.replace("_", " ")) for n in names], self.cfg.context_length)
        ids = ids.to(self.logit_scale.device)
        was_training = self.text.training
        self.text.eval()
        feats = torch.cat([self.encode_text(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])
        self.text.train(was_training)
        self.class_features = feats
        self.class_names = list(names)
        return feats

    # ------------------------------------------------------- the retrieval interface (RetrievalTask, ITC only)
    def encode_vision(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video: (B, T, 3, H, W) as the retrieval DataModules give it -> (frame embeddings (B, T, E), their
        temporal mean (B, E)); no ``itm_logits``: RetrievalTask ranks by ITC alone."""
        frames = self.frame_features(video.permute(0, 2, 1, 3, 4))
        return frames, frames.mean(dim=1)

    def forward(self, video: Tensor) -> Tensor:
        """video: (B, 3, T, H, W) -> logits (B, K) = exp(logit_scale) x cosine with the class prompts."""
        if self.class_features.shape[0] == 0:
            raise RuntimeError("ViFiCLIP has no class prompts: call set_class_names(names) first")
        return self.logit_scale.exp() * self.encode_video(video) @ self.class_features.to(self.proj.dtype).t()

    def forward_pooled(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video: (B, 3, T, H, W) -> (logits (B, K) as ``forward``, the video embeddings (B, E))."""
        if self.class_features.shape[0] == 0:
            raise RuntimeError("ViFiCLIP has no class prompts: call set_class_names(names) first")
        embedding = self.encode_video(video)
        return self.logit_scale.exp() * embedding @ self.class_features.to(self.proj.dtype).t(), embedding


# ---------------------------------------------------------------------------------------------- checkpoint layouts
_OPENAI_BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.qkv.weight",
                 "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
                 "mlp.c_proj": "mlp.fc2"}
_VIFI_DROPPED = ("prompt_learner.", "attn_mask")


def _visual_from_openai(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI ``visual.*`` keys (without the prefix) -> ours."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "conv1.weight":
            out["encoder.patch_embed.proj.weight"] = value.unsqueeze(2)
        elif key == "class_embedding":
            out["encoder.cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["encoder.pos_embed"] = value.unsqueeze(0)
        elif key.startswith("ln_pre."):
            out["encoder.norm_pre." + key[7:]] = value
        elif key.startswith(("ln_post.", "proj")):
            out[key] = value
        elif key.startswith("transformer.resblocks."):
            index, sub = key[len("transformer.resblocks."):].split(".", 1)
            for src, dst in _OPENAI_BLOCK.items():
                if sub == src or sub.startswith(src + "."):
                    out[f"encoder.blocks.{index}.{dst}{sub[len(src):]}"] = value
                    break
            else:
                out["visual." + key] = value  # reported as unexpected
        else:
            out["visual." + key] = value
    return out


def _from_openai(state: Mapping[str, Tensor], visual: str, text: str) -> tuple[dict[str, Tensor], list[str]]:
    """OpenAI / open_clip (visual "visual.", text "") or ViFi-CLIP ("image_encoder.", "text_encoder.") -> ours."""
    out = _visual_from_openai({k[len(visual):]: v for k, v in state.items() if k.startswith(visual)})
    notes: list[str] = []
    for key, value in state.items():
        if key.startswith(visual):
            continue
        if key.startswith(_VIFI_DROPPED):
            notes.append(f"{key} dropped (the official loader drops it too: prompts are re-encoded from class names)")
        elif key == "logit_scale":
            out[key] = value
        elif key.startswith(text):
            out["text." + key[len(text):]] = value
        else:
            out[key] = value
    return out, notes


_HF_BLOCK = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_HF_TEXT_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _hf_layers(state: Mapping[str, Tensor], prefix: str, names: dict[str, str], target: str,
               packed: tuple[str, str]) -> dict[str, Tensor]:
    """HF encoder layers under ``prefix`` -> ``target.{i}.<ours>``; q / k / v concatenated into ``packed``."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        index, sub = key[len(prefix):].split(".", 1)
        part, kind = sub.rsplit(".", 1)
        if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((index, kind), {})[part[-6]] = value
            continue
        out[f"{target}.{index}.{names.get(part, part)}.{kind}"] = value
    for (index, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{target}.{index}.{packed[kind == 'bias']}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _from_hf(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """HF ``CLIPModel`` keys -> ours (q / k / v packed, projections transposed)."""
    out = _hf_layers(state, "vision_model.encoder.layers.", _HF_BLOCK, "encoder.blocks",
                     ("attn.qkv.weight", "attn.qkv.bias"))
    out.update(_hf_layers(state, "text_model.encoder.layers.", _HF_TEXT_BLOCK, "text.transformer.resblocks",
                          ("attn.in_proj_weight", "attn.in_proj_bias")))
    simple = {
        "vision_model.embeddings.patch_embedding.weight": ("encoder.patch_embed.proj.weight", lambda t: t.unsqueeze(2)),
        "vision_model.embeddings.class_embedding": ("encoder.cls_token", lambda t: t.reshape(1, 1, -1)),
        "vision_model.embeddings.position_embedding.weight": ("encoder.pos_embed", lambda t: t.unsqueeze(0)),
        "visual_projection.weight": ("proj", lambda t: t.t()),
        "text_projection.weight": ("text.text_projection", lambda t: t.t()),
        "text_model.embeddings.token_embedding.weight": ("text.token_embedding.weight", None),
        "text_model.embeddings.position_embedding.weight": ("text.positional_embedding", None),
        "logit_scale": ("logit_scale", None),
    }
    norms = {"vision_model.pre_layrnorm.": "encoder.norm_pre.", "vision_model.post_layernorm.": "ln_post.",
             "text_model.final_layer_norm.": "text.ln_final."}
    notes: list[str] = []
    for key, value in state.items():
        if key.startswith(("vision_model.encoder.layers.", "text_model.encoder.layers.")):
            continue
        if key in simple:
            name, fn = simple[key]
            out[name] = fn(value) if fn else value
        elif key.endswith("position_ids"):
            notes.append(f"{key} dropped (a constant index buffer)")
        elif any(key.startswith(p) for p in norms):
            p = next(p for p in norms if key.startswith(p))
            out[norms[p] + key[len(p):]] = value
        else:
            out[key] = value  # reported as unexpected
    return out, notes


def to_vificlip_layout(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Any supported layout (ours, ViFi-CLIP, OpenAI / open_clip CLIP, HF CLIPModel) -> (our keys, notes)."""
    state = strip_prefix(state, "module.")
    if any(k.startswith("image_encoder.") for k in state):
        return _from_openai(state, "image_encoder.", "text_encoder.")
    if any(k.startswith("visual.") for k in state):
        return _from_openai(state, "visual.", "")
    if any(k.startswith("vision_model.") for k in state):
        return _from_hf(state)
    return dict(state), []


def load_vificlip_checkpoint(model: ViFiCLIP, path: str | Path, strict: bool = True,
                             clip_checkpoint: str | Path | None = None) -> LoadReport:
    """Load a ViFi-CLIP, OpenAI / open_clip, HF or our checkpoint into ``model`` (strict: keys and shapes must
    match). clip_checkpoint (default ``model.cfg.clip_checkpoint``): a CLIP file to take ``text.token_embedding``
    from when ``path`` lacks it (ViFi-CLIP files do)."""
    state, notes = to_vificlip_layout(read_state_dict(path))
    clip_checkpoint = clip_checkpoint if clip_checkpoint is not None else getattr(model.cfg, "clip_checkpoint", None)
    key = "text.token_embedding.weight"
    if key not in state:
        if clip_checkpoint is None:
            notes.append(f"{path} has no token embedding (a ViFi-CLIP file): pass clip_checkpoint=<OpenAI / "
                         "open_clip / HF CLIP ViT-B/16 file> to take it from there")
        else:
            other, _ = to_vificlip_layout(read_state_dict(clip_checkpoint))
            if key not in other:
                raise CheckpointError(f"clip_checkpoint {clip_checkpoint} has no token embedding either")
            state[key] = other[key]
            notes.append(f"token embedding taken from {clip_checkpoint}")
    report = LoadReport(path=str(path), notes=notes)
    return load_state_into(model, state, str(path), strict, report=report)


# ------------------------------------------------------------------------------------------------------ presets
_TEXT_FIELDS = {"embed_dim", "vocab_size", "context_length", "text_width", "text_layers", "text_heads"}


def _config(vision: dict[str, Any], text: dict[str, Any], **overrides: Any) -> ViFiCLIPConfig:
    """overrides: ViTConfig fields of the image tower (``vision_width`` is its embed_dim; ``embed_dim`` is the joint
    space), ``num_frames`` (frames per clip), ``clip_checkpoint`` and the text fields."""
    width = overrides.pop("vision_width", None)
    if width is not None:
        vision = {**vision, "embed_dim": width}
    top = {k: overrides.pop(k) for k in list(overrides) if k in _TEXT_FIELDS | {"num_frames", "clip_checkpoint"}}
    return ViFiCLIPConfig(vision=_vision(**{**vision, **overrides}), **{**text, **top})


_ZERO_SHOT = dict(loader=load_vificlip_checkpoint, mean=IMAGENET_MEAN, std=IMAGENET_STD, task="classification")


@register_model(num_frames=32, img_size=224, **_ZERO_SHOT,
                description="ViFi-CLIP: CLIP ViT-B/16 per frame (197 tokens, CLS protected) + CLIP text tower, 32 frames")
def vificlip_b16(**overrides: Any) -> ViFiCLIP:
    return ViFiCLIP(_config({}, {}, **overrides))


@register_model(num_frames=4, img_size=32, **_ZERO_SHOT, description="a tiny ViFi-CLIP-style dual encoder, for tests")
def vificlip_tiny(**overrides: Any) -> ViFiCLIP:
    return ViFiCLIP(_config(
        {"embed_dim": 64, "depth": 3, "num_heads": 4, "patch_size": 8},
        {"embed_dim": 32, "vocab_size": 49408, "context_length": 16, "text_width": 32, "text_layers": 2,
         "text_heads": 4}, **overrides))


# the embedded demo (configs/demo_vificlip.yaml): umt_demo's vision widths (6 x 192, 96 px: 37 tokens a frame, GELU
# as UMT, so it starts from that encoder: tools/init_from_umt_demo.py), 8 frames, a small text tower; README
# "The ViFi-CLIP demo" says how its weights were trained
@register_model(num_frames=8, img_size=96, **_ZERO_SHOT,
                builtin_weights={"vificlip_demo_synthetic": "vificlip_demo_synthetic.safetensors"},
                description="the embedded zero-shot demo (6 x 192 per frame, 8 frames at 96 px, 4 x 64 text tower); "
                            "weights builtin:vificlip_demo_synthetic")
def vificlip_demo(**overrides: Any) -> ViFiCLIP:
    return ViFiCLIP(_config(
        {"embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 16, "act": "gelu"},
        {"embed_dim": 128, "vocab_size": 49408, "context_length": 32, "text_width": 64, "text_layers": 4,
         "text_heads": 2}, **overrides))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PROMPT_TEMPLATE", "ViFiCLIP", "ViFiCLIPConfig", "load_vificlip_checkpoint",
           "to_vificlip_layout"]
