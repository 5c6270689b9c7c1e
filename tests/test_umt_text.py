"""UMT text encoder (ALBEF-style BERT with fusion layers): checkpoint layout, numerics, masking."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vidtldr_pl.backbones.umt.text import TextEncoderConfig, UMTTextEncoder

PREFIX = "text_encoder."
def _manifest() -> dict:
    from reference_data import reference_path

    return json.loads(reference_path("umt_state_dict_keys.json").read_text())


def small_cfg(**kw) -> TextEncoderConfig:
    base = dict(vocab_size=100, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                fusion_layer=2, encoder_width=48, max_position_embeddings=32)
    base.update(kw)
    return TextEncoderConfig(**base)


def randomized(cfg: TextEncoderConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> UMTTextEncoder:
    """Model in eval mode with non-trivial weights (BERT init makes attention nearly uniform)."""
    torch.manual_seed(seed)
    model = UMTTextEncoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embeddings" in name:
                p.copy_(torch.randn_like(p))
            else:  # Linear weight (out, in)
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
    return model.to(dtype)


# --------------------------------------------------------------------------------------------------
# Independent reference: explicit post-LN BERT from the state dict (manual heads, explicit softmax).
# --------------------------------------------------------------------------------------------------
def ref_layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_linear(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def ref_attention_block(sd, pre, x, kv, mask01, heads, eps):
    """BertAttention: LayerNorm(dense(MHA(x -> kv)) + x); mask01 (B, N) with ALBEF (1-m)*-10000."""
    b, l, d = x.shape
    n, hd = kv.shape[1], d // heads
    q = ref_linear(sd, pre + ".self.query", x).reshape(b, l, heads, hd).permute(0, 2, 1, 3)
    k = ref_linear(sd, pre + ".self.key", kv).reshape(b, n, heads, hd).permute(0, 2, 1, 3)
    v = ref_linear(sd, pre + ".self.value", kv).reshape(b, n, heads, hd).permute(0, 2, 1, 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores + (1.0 - mask01[:, None, None, :].to(x.dtype)) * -10000.0
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    probs = e / e.sum(-1, keepdim=True)
    ctx = (probs @ v).permute(0, 2, 1, 3).reshape(b, l, d)
    out = ref_linear(sd, pre + ".output.dense", ctx) + x
    return ref_layernorm(out, sd[pre + ".output.LayerNorm.weight"], sd[pre + ".output.LayerNorm.bias"], eps)


def ref_layer(sd, i, x, mask01, cfg, vis=None, vmask01=None):
    pre = f"encoder.layer.{i}"
    eps, h = cfg.layer_norm_eps, cfg.num_heads
    x = ref_attention_block(sd, pre + ".attention", x, x, mask01, h, eps)
    if i >= cfg.fusion_layer:
        x = ref_attention_block(sd, pre + ".crossattention", x, vis, vmask01, h, eps)
    inter = ref_gelu(ref_linear(sd, pre + ".intermediate.dense", x))
    out = ref_linear(sd, pre + ".output.dense", inter) + x
    return ref_layernorm(out, sd[pre + ".output.LayerNorm.weight"], sd[pre + ".output.LayerNorm.bias"], eps)


def ref_embeddings(sd, ids, cfg):
    l = ids.shape[1]
    e = (sd["embeddings.word_embeddings.weight"][ids]
         + sd["embeddings.position_embeddings.weight"][torch.arange(l)][None]
         + sd["embeddings.token_type_embeddings.weight"][0])
    return ref_layernorm(e, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)


def ref_text(sd, ids, mask01, cfg):
    x = ref_embeddings(sd, ids, cfg)
    for i in range(cfg.fusion_layer):
        x = ref_layer(sd, i, x, mask01, cfg)
    return x


def ref_fusion(sd, x, mask01, vis, vmask01, cfg):
    for i in range(cfg.fusion_layer, cfg.num_layers):
        x = ref_layer(sd, i, x, mask01, cfg, vis, vmask01)
    return x


def f64_state(model):
    return {k: (v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def inputs(cfg, b=3, l=9, n=11, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (b, l), generator=g)
    mask = torch.ones(b, l)
    mask[1 % b, 6:] = 0  # padded captions
    mask[2 % b, 4:] = 0
    vis = torch.randn(b, n, cfg.encoder_width, generator=g).to(dtype)
    vmask = torch.ones(b, n)
    vmask[0, 7:] = 0
    return ids, mask, vis, vmask


# --------------------------------------------------------------------------------------------------
# Checkpoint layout
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_base() -> UMTTextEncoder:
    torch.manual_seed(0)
    return UMTTextEncoder(TextEncoderConfig.bert_base()).eval()


def _manifest_text(name: str) -> dict:
    entry = _manifest()[f"umt_{name}_retrieval_finetuned_full"]
    return {k[len(PREFIX):]: v for k, v in entry.items() if k.startswith(PREFIX)}


def _check_layout(model: UMTTextEncoder, name: str) -> None:
    expected = _manifest_text(name)
    sd = model.state_dict()
    assert list(sd) == list(expected)  # same keys, same order as the official state_dict
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    for k, spec in expected.items():
        assert list(sd[k].shape) == spec["shape"], k
        assert str(sd[k].dtype) == f"torch.{spec['dtype']}", k
        assert (k in params) == (spec["kind"] == "param"), k
        assert (k in buffers) == (spec["kind"] == "buffer"), k


def test_state_dict_matches_manifest_b16(bert_base):
    _check_layout(bert_base, "b16")
    pos = bert_base.state_dict()["embeddings.position_ids"]
    assert torch.equal(pos, torch.arange(512).unsqueeze(0))


def test_state_dict_matches_manifest_l16():
    with torch.device("meta"):
        model = UMTTextEncoder(TextEncoderConfig.bert_large())
    _check_layout(model, "l16")
    cross = sorted({int(k.split(".")[2]) for k in model.state_dict() if ".crossattention." in k})
    assert cross == _manifest()["_summary_l16"]["cross_attention_layers"] == list(range(19, 24))
    assert model.encoder.layer[19].crossattention.self.key.weight.shape == (1024, 1024)


@pytest.mark.parametrize("name", ["b16", "l16"])
def test_parameter_count_matches_summary(name):
    cfg = TextEncoderConfig.bert_base() if name == "b16" else TextEncoderConfig.bert_large()
    with torch.device("meta"):
        model = UMTTextEncoder(cfg)
    summary = _manifest()[f"_summary_{name}"]
    expected = _manifest_text(name)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    # The summary counts parameters only: the int64 position_ids buffer (1 x 512) is not included.
    manifest_params = sum(math.prod(v["shape"]) for v in expected.values() if v["kind"] == "param")
    assert n_params == summary["n_params_text"] == manifest_params
    assert n_buffers == 512
    assert summary["text_layers"] == cfg.num_layers and summary["text_fusion_layer"] == cfg.fusion_layer
    assert n_params == {"b16": 115_983_360, "l16": 355_094_528}[name]


def test_fresh_init_is_sane(bert_base):
    sd = bert_base.state_dict()
    w = sd["encoder.layer.0.attention.self.query.weight"]
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert abs(sd["embeddings.word_embeddings.weight"].std().item() - 0.02) < 1e-3
    assert torch.all(sd["encoder.layer.11.crossattention.output.dense.bias"] == 0)
    assert torch.all(sd["encoder.layer.5.output.LayerNorm.weight"] == 1)
    assert torch.all(sd["embeddings.LayerNorm.bias"] == 0)
    ids = torch.randint(0, 30522, (2, 8))
    mask = torch.ones(2, 8)
    with torch.no_grad():
        t = bert_base.forward_text(ids, mask)
        f = bert_base.forward_fusion(t, mask, torch.randn(2, 5, 768))
    assert t.shape == f.shape == (2, 8, 768)
    assert torch.isfinite(f).all()
    # Post-LN output with LayerNorm (1, 0): each token is standardised.
    assert torch.allclose(t.std(-1, unbiased=False), torch.ones(2, 8), atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Numerics against the independent reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers,fusion_layer", [(1, 1), (1, 0), (4, 2)])
def test_matches_reference_float32(num_layers, fusion_layer):
    """(1, 1): embeddings + one text layer; (1, 0): one fusion layer; (4, 2): two of each."""
    cfg = small_cfg(num_layers=num_layers, fusion_layer=fusion_layer)
    model = randomized(cfg)
    ids, mask, vis, vmask = inputs(cfg)
    sd = f64_state(model)
    with torch.no_grad():
        text = model.forward_text(ids, mask)
        ref_t = ref_text(sd, ids, mask.double(), cfg)
        assert (text.double() - ref_t).abs().max().item() < 1e-5
        # Fusion from the same (float64 reference) text states so the two stages are checked separately.
        fused = model.forward_fusion(ref_t.float(), mask, vis, vmask)
        ref_f = ref_fusion(sd, ref_t, mask.double(), vis.double(), vmask.double(), cfg)
        assert (fused.double() - ref_f).abs().max().item() < 1e-5


def test_matches_reference_float64_tight():
    cfg = small_cfg()
    model = randomized(cfg, seed=3, dtype=torch.float64)
    ids, mask, vis, vmask = inputs(cfg, seed=4, dtype=torch.float64)
    sd = model.state_dict()
    with torch.no_grad():
        text = model.forward_text(ids, mask)
        fused = model.forward_fusion(text, mask, vis, vmask)
    ref_t = ref_text(sd, ids, mask.double(), cfg)
    assert (text - ref_t).abs().max().item() < 1e-10
    ref_f = ref_fusion(sd, ref_t, mask.double(), vis, vmask.double(), cfg)
    assert (fused - ref_f).abs().max().item() < 1e-10


def test_reference_is_sensitive():
    """Guard: the reference itself distinguishes a wrong GELU / a missing cross-attention."""
    cfg = small_cfg(num_layers=1, fusion_layer=0)
    model = randomized(cfg)
    ids, mask, vis, vmask = inputs(cfg)
    sd = f64_state(model)
    x = ref_embeddings(sd, ids, cfg)
    with torch.no_grad():
        out = model.forward_fusion(x.float(), mask, vis, vmask).double()
    no_cross = ref_fusion(sd, x, mask.double(), vis.double(), vmask.double(), small_cfg(num_layers=1, fusion_layer=1))
    assert (out - no_cross).abs().max().item() > 1e-2
    tanh_gelu = torch.nn.functional.gelu(torch.linspace(-3, 3, 101, dtype=torch.float64), approximate="tanh")
    assert (tanh_gelu - ref_gelu(torch.linspace(-3, 3, 101, dtype=torch.float64))).abs().max().item() > 1e-4


# --------------------------------------------------------------------------------------------------
# Masking and mode behaviour
# --------------------------------------------------------------------------------------------------
def test_text_padding_invariance():
    cfg = small_cfg()
    model = randomized(cfg, seed=5)
    ids, _, vis, _ = inputs(cfg, b=2, l=7)
    mask = torch.ones(2, 7)
    pad_ids = torch.cat([ids, torch.randint(0, cfg.vocab_size, (2, 5))], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(2, 5)], dim=1)
    with torch.no_grad():
        t, tp = model.forward_text(ids, mask), model.forward_text(pad_ids, pad_mask)
        f, fp = model.forward_fusion(t, mask, vis), model.forward_fusion(tp, pad_mask, vis)
    assert (t - tp[:, :7]).abs().max().item() < 1e-5
    assert (f - fp[:, :7]).abs().max().item() < 1e-5
    # Sanity: attending to the pads (mask 1) would change the real tokens.
    with torch.no_grad():
        tu = model.forward_text(pad_ids, torch.ones(2, 12))
    assert (t - tu[:, :7]).abs().max().item() > 1e-2


def test_vision_tokens_affect_fusion_only():
    cfg = small_cfg()
    model = randomized(cfg, seed=6)
    ids, mask, vis, _ = inputs(cfg)
    vis2 = vis + torch.randn_like(vis)
    with torch.no_grad():
        t1 = model(ids, mask, mode="text", encoder_hidden_states=vis)
        t2 = model(ids, mask, mode="text", encoder_hidden_states=vis2)
        f1 = model(attention_mask=mask, mode="fusion", encoder_embeds=t1, encoder_hidden_states=vis)
        f2 = model(attention_mask=mask, mode="fusion", encoder_embeds=t1, encoder_hidden_states=vis2)
    assert torch.equal(t1, t2)
    assert (f1 - f2).abs().max().item() > 1e-2


def test_vision_mask_equals_removing_tokens():
    cfg = small_cfg()
    model = randomized(cfg, seed=7)
    ids, mask, vis, _ = inputs(cfg, n=10)
    drop = torch.tensor([1, 4, 5, 9])
    keep = torch.tensor([i for i in range(10) if i not in drop.tolist()])
    vmask = torch.ones(vis.shape[:2])
    vmask[:, drop] = 0
    with torch.no_grad():
        t = model.forward_text(ids, mask)
        masked = model.forward_fusion(t, mask, vis, vmask)
        removed = model.forward_fusion(t, mask, vis[:, keep], None)
        full = model.forward_fusion(t, mask, vis, None)
    assert (masked - removed).abs().max().item() < 1e-5
    assert (masked - full).abs().max().item() > 1e-2
    # vision_mask=None means all ones.
    with torch.no_grad():
        ones = model.forward_fusion(t, mask, vis, torch.ones(vis.shape[:2]))
    assert torch.equal(ones, full)


def test_fully_masked_rows_follow_albef_convention():
    """-10000 additive text mask (official xbert): an all-zero mask shifts every score equally, so the
    result equals the unmasked one instead of NaN. (The official vision mask uses finfo.min instead; for an
    all-zero vision mask we only require finite output, see the module docstring.)"""
    cfg = small_cfg()
    model = randomized(cfg, seed=8, dtype=torch.float64)
    ids, mask, vis, _ = inputs(cfg, dtype=torch.float64)
    with torch.no_grad():
        empty_text = model.forward_text(ids, torch.zeros_like(mask))
        full_text = model.forward_text(ids, torch.ones_like(mask))
        none_visible = model.forward_fusion(full_text, mask, vis, torch.zeros(vis.shape[:2]))
    assert torch.isfinite(empty_text).all() and torch.isfinite(none_visible).all()
    assert (empty_text - full_text).abs().max().item() < 1e-8


def test_forward_modes_dispatch():
    cfg = small_cfg()
    model = randomized(cfg, seed=9)
    ids, mask, vis, vmask = inputs(cfg)
    with torch.no_grad():
        t = model.forward_text(ids, mask)
        f = model.forward_fusion(t, mask, vis, vmask)
        assert torch.equal(model(ids, mask), t)
        assert torch.equal(model(attention_mask=mask, mode="fusion", encoder_embeds=t,
                                 encoder_hidden_states=vis, encoder_attention_mask=vmask), f)
        assert torch.equal(model(ids, mask, mode="multi_modal", encoder_hidden_states=vis,
                                 encoder_attention_mask=vmask), f)
        assert torch.equal(model.forward_text(ids), model.forward_text(ids, torch.ones(ids.shape)))
    with pytest.raises(ValueError, match="mode"):
        model(ids, mask, mode="image")
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, mask, encoder_embeds=t)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(attention_mask=mask, mode="fusion", encoder_embeds=t)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.forward_text(torch.ones(1, cfg.max_position_embeddings + 1, dtype=torch.long))


def test_dropout_only_in_training():
    cfg = small_cfg(hidden_dropout=0.3, attention_dropout=0.3)
    model = randomized(cfg, seed=10)
    ids, mask, vis, _ = inputs(cfg)
    with torch.no_grad():
        assert torch.equal(model.forward_text(ids, mask), model.forward_text(ids, mask))
        model.train()
        a, b = model.forward_text(ids, mask), model.forward_text(ids, mask)
    assert (a - b).abs().max().item() > 1e-3


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def test_presets():
    base, large = TextEncoderConfig.bert_base(), TextEncoderConfig.bert_large()
    assert (base.hidden_size, base.num_layers, base.num_heads, base.intermediate_size, base.fusion_layer,
            base.encoder_width) == (768, 12, 12, 3072, 9, 768)
    assert (large.hidden_size, large.num_layers, large.num_heads, large.intermediate_size, large.fusion_layer,
            large.encoder_width) == (1024, 24, 16, 4096, 19, 1024)
    assert TextEncoderConfig.bert_base(encoder_width=1024).encoder_width == 1024
    assert TextEncoderConfig.bert_large(fusion_layer=20).fusion_layer == 20
    assert base.layer_norm_eps == 1e-12 and base.max_position_embeddings == 512 and base.vocab_size == 30522


@pytest.mark.parametrize("fusion_layer", [5, -1])
def test_bad_fusion_layer_raises(fusion_layer):
    with pytest.raises(ValueError, match="fusion_layer"):
        small_cfg(fusion_layer=fusion_layer)
    cfg = small_cfg()
    cfg.fusion_layer = fusion_layer  # mutated after construction: caught when building the model
    with pytest.raises(ValueError, match="fusion_layer"):
        UMTTextEncoder(cfg)
    with pytest.raises(ValueError, match="divisible"):
        small_cfg(hidden_size=66)


def test_no_fusion_layers_and_only_fusion_layers():
    text_only = randomized(small_cfg(fusion_layer=4), seed=11)
    assert not any(".crossattention." in k for k in text_only.state_dict())
    ids, mask, vis, _ = inputs(text_only.config)
    with torch.no_grad():
        t = text_only.forward_text(ids, mask)
        assert torch.equal(text_only.forward_fusion(t, mask, vis), t)
        assert torch.equal(text_only(encoder_embeds=t, attention_mask=mask, mode="fusion"), t)
    fusion_only = UMTTextEncoder(small_cfg(fusion_layer=0))
    assert all(hasattr(layer, "crossattention") for layer in fusion_only.encoder.layer)
