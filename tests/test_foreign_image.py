"""Image towers merged in place (``vidtldr_pl.foreign``): transformers CLIP vision (``hf_clip``), SigLIP vision
(``hf_siglip``) and open_clip's VisionTransformer (``open_clip_vit``), small random configs. Merging off / r = 0 is
bit-identical, ``unpatch`` restores classes, attributes and outputs exactly, the adapters' branches are the blocks'
own, every method runs with the scheduled token counts, prefix tokens stay, the families' pooling reads sizes,
the models' own gradient checkpointing is handed over, and what cannot merge gets one line."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from open_clip.transformer import VisionTransformer  # noqa: E402

from vidtldr_pl.errors import UsageError  # noqa: E402
from vidtldr_pl.foreign import size_weighted_mean, supported_families  # noqa: E402
from vidtldr_pl.merging import METHODS, MergeSetting, MergeState, apply_merge, find_mergeable, unpatch  # noqa: E402
from vidtldr_pl.merging.block import merging_block_forward  # noqa: E402

R = [3, 2, 1]
ATTN = ["eager", "sdpa"]


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _jitter(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norms and biases (zero biases / unit norms would hide a missing one)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _vision_kw(**kw) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                patch_size=8, **kw)


def hf_clip(attn: str = "sdpa", cls: str = "CLIPVisionModelWithProjection") -> torch.nn.Module:
    torch.manual_seed(0)
    if cls in ("CLIPModel", "CLIPForImageClassification"):
        cfg = transformers.CLIPConfig(
            text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=8),
            vision_config=_vision_kw(), projection_dim=16, num_labels=5)
    else:
        cfg = transformers.CLIPVisionConfig(**_vision_kw(projection_dim=16))
    cfg._attn_implementation = attn
    for sub in ("text_config", "vision_config"):
        if hasattr(cfg, sub):
            getattr(cfg, sub)._attn_implementation = attn
    return _jitter(getattr(transformers, cls)(cfg))


def hf_siglip(attn: str = "sdpa", cls: str = "SiglipVisionModel") -> torch.nn.Module:
    torch.manual_seed(0)
    if cls in ("SiglipModel", "SiglipForImageClassification"):
        cfg = transformers.SiglipConfig(
            text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=8),
            vision_config=_vision_kw(), num_labels=5)
    else:
        cfg = transformers.SiglipVisionConfig(**_vision_kw())
    cfg._attn_implementation = attn
    for sub in ("text_config", "vision_config"):
        if hasattr(cfg, sub):
            getattr(cfg, sub)._attn_implementation = attn
    return _jitter(getattr(transformers, cls)(cfg))


def oc_vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=4.0, output_dim=16,
               pool_type="avg", ls_init_value=0.5)
    return _jitter(VisionTransformer(**{**cfg, **kw}))


def oc_custom() -> torch.nn.Module:
    """open_clip's CustomResidualAttentionBlock with every option it runs: q / k norm, head scale, inner norms."""
    return oc_vit(qk_norm=True, scale_heads=True, scale_attn_inner=True, scale_attn=True, scale_fc=True)


@dataclass
class Family:
    build: Callable[[], torch.nn.Module]
    run: Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, ...]]  # what a user reads
    tokens: int  # entering the first block
    prefix: int


def _hf_run(model, x):
    out = model(pixel_values=x)
    return tuple(v for v in out.values() if isinstance(v, torch.Tensor))


def _clip_model_run(model, x):
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(3))
    out = model(input_ids=ids, pixel_values=x)
    return out.logits_per_image, out.image_embeds, out.text_embeds, out.vision_model_output.last_hidden_state


FAMILIES = {
    "clip-eager": Family(lambda: hf_clip("eager"), _hf_run, 17, 1),
    "clip-sdpa": Family(lambda: hf_clip("sdpa"), _hf_run, 17, 1),
    "clip-model": Family(lambda: hf_clip("sdpa", "CLIPModel"), _clip_model_run, 17, 1),
    "clip-classifier": Family(lambda: hf_clip("eager", "CLIPForImageClassification"), _hf_run, 17, 1),
    "siglip-eager": Family(lambda: hf_siglip("eager"), _hf_run, 16, 0),
    "siglip-sdpa": Family(lambda: hf_siglip("sdpa"), _hf_run, 16, 0),
    "siglip-model": Family(lambda: hf_siglip("sdpa", "SiglipModel"), _clip_model_run, 16, 0),
    "siglip-classifier": Family(lambda: hf_siglip("eager", "SiglipForImageClassification"), _hf_run, 16, 0),
    "open_clip-avg": Family(oc_vit, lambda m, x: (m(x),), 17, 1),
    "open_clip-tok": Family(lambda: oc_vit(pool_type="tok", output_tokens=True), lambda m, x: m(x), 17, 1),
    "open_clip-custom": Family(oc_custom, lambda m, x: (m(x),), 17, 1),
    "open_clip-seq-first": Family(lambda: _seq_first(oc_vit()), lambda m, x: (m(x),), 17, 1),
}


def _seq_first(model: torch.nn.Module) -> torch.nn.Module:
    """open_clip's (L, N, D) layout (``batch_first=False``, older open_clip's default)."""
    model.transformer.batch_first = False
    for block in model.transformer.resblocks:
        block.attn.batch_first = False
    return model


def _snapshot(model):
    return {id(m): type(m) for m in model.modules()}, {id(m): set(m.__dict__) for m in model.modules()}


@pytest.mark.parametrize("family", FAMILIES)
def test_off_and_r0_are_bit_identical_and_unpatch_restores(family):
    fam = FAMILIES[family]
    model = fam.build()
    x = _images()
    with torch.no_grad():
        ref = fam.run(model, x)
        before = _snapshot(model)
        for setting in (MergeSetting(method="none"), MergeSetting(method="vidtldr", r=[0, 0, 0])):
            apply_merge(model, setting)
            assert find_mergeable(model)[0].foreign_family in supported_families()
            assert all(torch.equal(a, b) for a, b in zip(fam.run(model, x), ref, strict=True))
        apply_merge(model, MergeSetting(method="vidtldr", r=R))
        merged = fam.run(model, x)
        assert not all(a.shape == b.shape and torch.allclose(a, b) for a, b in zip(merged, ref, strict=True))
        unpatch(model)
        assert _snapshot(model) == before
        assert all(torch.equal(a, b) for a, b in zip(fam.run(model, x), ref, strict=True))


def _encoder_and_blocks(model):
    encoder = find_mergeable(model)[0]
    return encoder, list(encoder.blocks)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("clip-model", "siglip-model")])
def test_the_branches_are_the_blocks_own(family):
    """The merging forward without a merge (the adapter's q / k / v, scale, output projection, layer-scale, MLP)
    reproduces each block's own forward."""
    model = FAMILIES[family].build()
    apply_merge(model, MergeSetting(method="tome", r=R))
    _, blocks = _encoder_and_blocks(model)
    x = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(4))
    seq_first = family == "open_clip-seq-first"
    with torch.no_grad():
        for block in blocks:
            args = (None,) if family.startswith(("clip", "siglip")) else ()  # the HF layers' attention_mask
            own = block(x.transpose(0, 1) if seq_first else x, *args)  # off outside a forward: the original
            own = own.transpose(0, 1) if seq_first else own
            merge, block.merge = block.merge, None
            ours = merging_block_forward(block, x, MergeState())
            block.merge = merge
            torch.testing.assert_close(ours, own, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["clip-eager", "clip-sdpa", "siglip-eager", "siglip-sdpa", "open_clip-avg",
                                    "open_clip-custom"])
@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].position != "input"])  # input: no hook here
def test_every_method_merges_as_scheduled(family, method):
    fam = FAMILIES[family]
    model = fam.build()
    counts = apply_merge(model, MergeSetting(method=method, r=R, trace_source=True))
    encoder = find_mergeable(model)[0]
    assert encoder.num_prefix_tokens == fam.prefix and encoder.num_tokens == fam.tokens
    assert encoder.blocks[0].merge_attention == ("explicit" if family.endswith("eager") else "fused")
    expected = [fam.tokens - 3, fam.tokens - 5, fam.tokens - 6]
    assert counts == [expected]
    with torch.no_grad():
        out = fam.run(model, _images())
    state = encoder.last_merge_state
    assert state.tokens_per_layer == expected and state.source.shape[:2] == (2, expected[-1])
    assert all(torch.isfinite(o).all() for o in out)
    if fam.prefix:  # the CLS: first, holding only itself (and of size 1 where the method tracks sizes)
        assert torch.all(state.source[:, 0, 0] == 1) and torch.all(state.source[:, 0].sum(-1) == 1)
        assert state.size is None or torch.all(state.size[:, 0] == 1)
    if method in ("tome", "random"):  # plain merges: every patch counted once
        torch.testing.assert_close(state.size.sum(1), torch.full((2, 1), float(fam.tokens)))


def test_clip_text_tower_is_untouched():
    model = hf_clip("sdpa", "CLIPModel")
    text_classes = {id(m): type(m) for m in model.text_model.modules()}
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.get_text_features(input_ids=ids).pooler_output
        apply_merge(model, MergeSetting(method="tome", r=R))
        assert {id(m): type(m) for m in model.text_model.modules()} == text_classes
        assert [type(e).__name__ for e in find_mergeable(model)] == ["MergeableCLIPVisionModel"]
        assert torch.equal(model.get_text_features(input_ids=ids).pooler_output, ref)


# ------------------------------------------------------------------------------------------------ pooling
def test_open_clip_average_pooling_is_size_weighted():
    model = oc_vit(output_tokens=True)
    apply_merge(model, MergeSetting(method="vidtldr", r=R))
    with torch.no_grad():
        pooled, tokens = model(_images())  # tokens: after ln_post, the CLS left out
        size = model.last_merge_state.size[:, 1:]
        torch.testing.assert_close(pooled, ((tokens * size).sum(1) / size.sum(1)) @ model.proj)
        assert not torch.allclose(pooled, tokens.mean(1) @ model.proj, atol=1e-4)


def test_clip_classifier_reads_the_size_weighted_mean():
    model = hf_clip("eager", "CLIPForImageClassification")
    apply_merge(model, MergeSetting(method="vidtldr", r=R))
    with torch.no_grad():
        logits = model(pixel_values=_images()).logits
        tokens = model.vision_model(pixel_values=_images()).last_hidden_state
        state = model.vision_model.last_merge_state
        torch.testing.assert_close(logits, model.classifier(size_weighted_mean(tokens, state, skip=1)))
        assert not torch.allclose(logits, model.classifier(tokens[:, 1:].mean(1)), atol=1e-4)


def test_siglip_classifier_reads_the_size_weighted_mean():
    model = hf_siglip("eager", "SiglipForImageClassification")
    apply_merge(model, MergeSetting(method="tome", r=R))
    with torch.no_grad():
        logits = model(pixel_values=_images()).logits
        tokens = model.vision_model(pixel_values=_images()).last_hidden_state
        state = model.vision_model.last_merge_state
        torch.testing.assert_close(logits, model.classifier(size_weighted_mean(tokens, state)))
        assert not torch.allclose(logits, model.classifier(tokens.mean(1)), atol=1e-4)


def test_siglip_map_head_attends_with_the_size_bias():
    model = hf_siglip("sdpa")
    apply_merge(model, MergeSetting(method="tome", r=R))
    with torch.no_grad():
        out = model(pixel_values=_images())
        size = model.last_merge_state.size
        head = model.head
        heads = head.attention.num_heads
        b, n, _ = out.last_hidden_state.shape
        probe = head.probe.repeat(b, 1, 1)
        bias = size.log()[..., 0][:, None, None, :].expand(b, heads, 1, n).reshape(b * heads, 1, n)
        for mask, same in ((bias, True), (None, False)):
            # the head's own computation with an explicit mask (hooks off: call the module's forward directly)
            h = torch.nn.MultiheadAttention.forward(head.attention, probe, out.last_hidden_state,
                                                    out.last_hidden_state, attn_mask=mask)[0]
            h = (h + head.mlp(head.layernorm(h)))[:, 0]
            assert torch.allclose(out.pooler_output, h, atol=1e-5) is same


def test_open_clip_attentional_pooler_attends_with_the_size_bias():
    model = oc_vit(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2, output_tokens=True)
    apply_merge(model, MergeSetting(method="tome", r=R))
    x = _images()
    with torch.no_grad():
        pooled, _ = model(x)
        tokens = model.transformer(model._embeds(x))
        size = model.last_merge_state.size
        pool = model.attn_pool
        b, n, _ = tokens.shape
        q = pool.ln_q(pool.query).unsqueeze(0).expand(b, -1, -1)
        k = pool.ln_k(tokens)
        bias = size.log()[..., 0][:, None, None, :].expand(b, 2, 4, n).reshape(b * 2, 4, n)
        attended = torch.nn.MultiheadAttention.forward(pool.attn, q, k, k, attn_mask=bias, need_weights=False)[0]
        expected, _ = model._global_pool(model.ln_post(attended))
        torch.testing.assert_close(pooled, expected @ model.proj, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ gradient checkpointing
def _grads(model, run, x):
    model.zero_grad()
    out = run(model, x)[0]
    out.square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["clip-sdpa", "siglip-eager", "open_clip-avg"])
def test_the_models_own_checkpointing_is_handed_over(family):
    """With the model's own activation checkpointing on (open_clip ``set_grad_checkpointing``, transformers
    ``activation_checkpointing_enable``), a merging training step runs and gives the gradients of one without it."""
    fam = FAMILIES[family]
    model = fam.build().train()
    apply_merge(model, MergeSetting(method="tome", r=R))
    x = _images()
    plain = _grads(model, fam.run, x)
    if family.startswith("open_clip"):
        model.set_grad_checkpointing(True)
        own = [(model.transformer, "grad_checkpointing")]
    else:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        own = [(layer, "gradient_checkpointing") for layer in find_mergeable(model)[0].encoder.layers]
    assert all(getattr(m, a) for m, a in own)
    checkpointed = _grads(model, fam.run, x)
    assert all(getattr(m, a) for m, a in own)  # put back after the forward
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------- refusals
def test_a_mask_is_refused_in_one_line():
    model = hf_clip("sdpa", "CLIPVisionModel")
    apply_merge(model, MergeSetting(method="tome", r=R))
    embeds = model.pre_layrnorm(model.embeddings(_images()))
    with pytest.raises(UsageError) as err:
        model.encoder(inputs_embeds=embeds, attention_mask=torch.zeros(2, 1, 17, 17))
    assert "\n" not in str(err.value) and "attention mask" in str(err.value)
    oc = oc_vit()
    apply_merge(oc, MergeSetting(method="tome", r=R))
    with pytest.raises(UsageError, match="attn_mask") as err:
        oc.transformer(oc._embeds(_images()), attn_mask=torch.zeros(17, 17))
    assert "\n" not in str(err.value)


def test_open_clip_scaled_cosine_attention_is_refused_before_any_graft():
    model = oc_vit(scaled_cosine_attn=True)
    classes, attrs = _snapshot(model)
    with pytest.raises(UsageError, match="scaled cosine") as err:
        apply_merge(model, MergeSetting(method="tome", r=R))
    assert "\n" not in str(err.value)
    assert _snapshot(model) == (classes, attrs)
