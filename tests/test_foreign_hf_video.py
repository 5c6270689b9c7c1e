"""Merging in place on transformers' video models (``vidtldr_pl.foreign``: VideoMAE, ViViT, TimeSformer, X-CLIP
vision), small random configs, eager and sdpa: off / r = 0 is bit-identical, ``unpatch`` gives the model back
exactly, the merging forward without a merge is the model's own forward, merging two identical tokens (tubes for
TimeSformer) is exact (proportional attention, size-weighted pooling, the unmerged X-CLIP prompt features), every
method runs with the scheduled token counts, prefix tokens stay, and the refusals are one line."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from vidtldr_pl.errors import UsageError
from vidtldr_pl.foreign import UnsupportedModelError, size_weighted_mean, supported_families
from vidtldr_pl.merging import METHODS, MergeSetting, apply_merge, find_mergeable, patch, unpatch

transformers = pytest.importorskip("transformers")  # in the test extra; the library itself never imports it

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
FRAMES, IMAGE, PATCH = 4, 32, 8  # a 4 x 4 patch grid per frame


@dataclass
class Family:
    """build(attn) -> model; video(seed) -> its input; out(model, x) -> the output compared; prefix tokens;
    tokens entering the first block (per frame for the frame-wise / tube-wise ones); kernel_by_setting: the model has
    no attn_implementation (TimeSformer writes its attention out), so "eager" / "sdpa" pick the merging forward's
    kernel through MergeSetting.attention ("explicit" / "fused")."""

    build: Callable[[str], torch.nn.Module]
    video: Callable[[int], dict]
    out: Callable[[torch.nn.Module, dict], torch.Tensor]
    prefix: int
    tokens: int
    kernel_by_setting: bool = False


def _video(seed: int) -> torch.Tensor:
    return torch.randn(2, FRAMES, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _frames(seed: int) -> torch.Tensor:
    return _video(seed).reshape(2 * FRAMES, 3, IMAGE, IMAGE)


def _seeded(cls, cfg):
    torch.manual_seed(0)
    return cls(cfg).eval()


def _videomae(attn: str, classifier: bool = True) -> torch.nn.Module:
    cfg = transformers.VideoMAEConfig(image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2,
                                      num_labels=5, use_mean_pooling=True, attn_implementation=attn, **SMALL)
    return _seeded(transformers.VideoMAEForVideoClassification if classifier else transformers.VideoMAEModel, cfg)


def _vivit(attn: str, classifier: bool = True) -> torch.nn.Module:
    cfg = transformers.VivitConfig(image_size=IMAGE, num_frames=FRAMES, tubelet_size=[2, PATCH, PATCH], num_labels=5,
                                   attn_implementation=attn, **SMALL)
    return _seeded(transformers.VivitForVideoClassification if classifier else transformers.VivitModel, cfg)


def _timesformer(attn: str, attention_type: str = "divided_space_time") -> torch.nn.Module:
    cfg = transformers.TimesformerConfig(image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, num_labels=5,
                                         attention_type=attention_type, **SMALL)
    return _seeded(transformers.TimesformerForVideoClassification, cfg)


def _xclip_vision_config(attn: str) -> transformers.XCLIPVisionConfig:
    return transformers.XCLIPVisionConfig(image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, mit_hidden_size=16,
                                          mit_intermediate_size=32, mit_num_attention_heads=2,
                                          attn_implementation=attn, **SMALL)


def _xclip_vision(attn: str) -> torch.nn.Module:
    return _seeded(transformers.XCLIPVisionModel, _xclip_vision_config(attn))


def _xclip(attn: str) -> torch.nn.Module:
    text = dict(vocab_size=50, max_position_embeddings=8, **SMALL)
    cfg = transformers.XCLIPConfig(text_config=text, vision_config=_xclip_vision_config(attn).to_dict(),
                                   projection_dim=16, prompt_layers=1, prompt_num_attention_heads=2,
                                   attn_implementation=attn)
    return _seeded(transformers.XCLIPModel, cfg)


def _xclip_inputs(seed: int) -> dict:
    return {"pixel_values": _video(seed), "input_ids": torch.tensor([[0, 5, 7, 2], [0, 9, 2, 1], [0, 3, 4, 2]])}


def _logits(model: torch.nn.Module, x: dict) -> torch.Tensor:
    return model(**x).logits


def _hidden(model: torch.nn.Module, x: dict) -> torch.Tensor:
    return model(**x).last_hidden_state


def _pooled(model: torch.nn.Module, x: dict) -> torch.Tensor:
    return model(**x).pooler_output


def _xclip_logits(model: torch.nn.Module, x: dict) -> torch.Tensor:
    return model(**x).logits_per_video


N_VIDEO = (FRAMES // 2) * (IMAGE // PATCH) ** 2  # 32 tubelets
N_FRAME = (IMAGE // PATCH) ** 2  # 16 patches per frame
FAMILIES = {
    "videomae": Family(_videomae, lambda s: {"pixel_values": _video(s)}, _logits, 0, N_VIDEO),
    "videomae_model": Family(lambda a: _videomae(a, False), lambda s: {"pixel_values": _video(s)}, _hidden, 0,
                             N_VIDEO),
    "vivit": Family(_vivit, lambda s: {"pixel_values": _video(s)}, _logits, 1, 1 + N_VIDEO),
    "vivit_model": Family(lambda a: _vivit(a, False), lambda s: {"pixel_values": _video(s)}, _pooled, 1, 1 + N_VIDEO),
    "timesformer": Family(_timesformer, lambda s: {"pixel_values": _video(s)}, _logits, 1, 1 + N_FRAME, True),
    "timesformer_joint": Family(lambda a: _timesformer(a, "joint_space_time"), lambda s: {"pixel_values": _video(s)},
                                _logits, 1, 1 + N_FRAME * FRAMES, True),
    "xclip_vision": Family(_xclip_vision, lambda s: {"pixel_values": _frames(s)}, _pooled, 1, 1 + N_FRAME),
    "xclip": Family(_xclip, _xclip_inputs, _xclip_logits, 1, 1 + N_FRAME),
}
ATTN = ("eager", "sdpa")
R = [3, 2, 1]


def _apply(fam: Family, model: torch.nn.Module, attn: str, method: str, r, **kw) -> list:
    """apply_merge; the kernel is the model's own (config) or, for TimeSformer, the setting's."""
    kernel = {"eager": "explicit", "sdpa": "fused"}[attn] if fam.kernel_by_setting else None
    counts = apply_merge(model, MergeSetting(method=method, r=r, attention=kernel, **kw))
    expected = "explicit" if attn == "eager" else "fused"
    assert all(block.merge_attention == expected for block in find_mergeable(model)[0].blocks)
    return counts


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", FAMILIES)
def test_off_and_r0_are_bit_identical_and_unpatch_restores(name, attn):
    fam = FAMILIES[name]
    model, x = fam.build(attn), fam.video(1)
    with torch.no_grad():
        ref = fam.out(model, x)
        attrs = {id(m): set(m.__dict__) for m in model.modules()}
        classes = {id(m): type(m) for m in model.modules()}
        hooks = _hooks(model)
        for method, r in (("none", None), ("vidtldr", [0, 0, 0]), ("tome", 0)):
            _apply(fam, model, attn, method, r)
            assert type(find_mergeable(model)[0]).__name__.startswith("Mergeable")
            assert torch.equal(fam.out(model, x), ref)
        _apply(fam, model, attn, "vidtldr", R)
        merged = fam.out(model, x)
        assert merged.shape != ref.shape or not torch.allclose(merged, ref)
        unpatch(model)
        assert {id(m): type(m) for m in model.modules()} == classes
        assert {id(m): set(m.__dict__) for m in model.modules()} == attrs
        assert _hooks(model) == hooks and not find_mergeable(model)
        assert torch.equal(fam.out(model, x), ref)


def _block_output(model: torch.nn.Module, block: torch.nn.Module, fam: Family, x: dict) -> torch.Tensor:
    seen = {}
    handle = block.register_forward_hook(lambda m, a, out: seen.update(out=out[0] if isinstance(out, tuple) else out))
    fam.out(model, x)
    handle.remove()
    return seen["out"]


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", FAMILIES)
def test_the_merging_forward_without_a_merge_is_the_models_own(name, attn):
    """r = [0, 0, 1]: blocks 0 and 1 run the merging forward (branches rebuilt from the family's modules, the message
    token, the tubes) without merging; their output equals the model's own blocks'."""
    fam = FAMILIES[name]
    model, x = fam.build(attn), fam.video(2)
    with torch.no_grad():
        block = find_mergeable(patch(model, "none"))[0].blocks[1]
        unpatch(model)
        ref = _block_output(model, block, fam, x)
        _apply(fam, model, attn, "tome", [0, 0, 1])
        ours = _block_output(model, block, fam, x)
    assert type(block).__name__.startswith("Merging")
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- merging identical tokens is exact
def _no_positions(model: torch.nn.Module) -> None:
    """Zero every position table, so two patches with the same pixels are the same token in every block."""
    with torch.no_grad():
        for module in model.modules():
            table = getattr(module, "position_embeddings", None)
            if isinstance(table, torch.Tensor) and type(module).__name__.endswith("Embeddings"):
                table.zero_()
            if type(module).__name__ == "XCLIPVisionEmbeddings":
                module.position_embedding.weight.zero_()


def _duplicate_patch(x: dict) -> dict:
    """Patch column 2 of row 0 copies column 1 in every frame: in every layout the two are neighbours, the first at
    an even position of the sequence (ToMe's side A), the second at an odd one."""
    video = x["pixel_values"].clone()
    video[..., 0:PATCH, 2 * PATCH:3 * PATCH] = video[..., 0:PATCH, PATCH:2 * PATCH]
    return {**x, "pixel_values": video}


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "timesformer_joint"])
def test_merging_two_identical_tokens_is_exact(name, attn):
    """ToMe merges the duplicate pair first (cosine 1); with proportional attention (log 2 on the merged key), the
    size-weighted VideoMAE mean and X-CLIP's unmerged prompt features, the output is the unmerged model's. For
    TimeSformer the pair is a tube (the same position in every frame): the grid stays valid."""
    fam = FAMILIES[name]
    model = fam.build(attn)
    _no_positions(model)
    if name.startswith("videomae"):
        model.config.use_mean_pooling = True
    x = _duplicate_patch(fam.video(3))
    with torch.no_grad():
        ref = fam.out(model, x)
        _apply(fam, model, attn, "tome", [1, 0, 0])
        merged = fam.out(model, x)
        state = find_mergeable(model)[0].last_merge_state
    assert state.tokens_per_layer == [fam.tokens - 1] * 3 and state.size.amax() == 2
    if name == "videomae_model":  # the merged sequence itself: size-weighted it averages to the same features
        assert torch.allclose(size_weighted_mean(merged, state), ref.mean(1), atol=1e-5)
        return
    assert torch.allclose(merged, ref, atol=5e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- every method, counts, prefix
@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].position != "input"])  # input: no hook here
@pytest.mark.parametrize("name", FAMILIES)
def test_every_method_merges_as_scheduled(name, method):
    fam = FAMILIES[name]
    for attn in ATTN:
        model = fam.build(attn)
        counts = _apply(fam, model, attn, method, R, trace_source=True)
        encoder = find_mergeable(model)[0]
        expected = [fam.tokens - 3, fam.tokens - 5, fam.tokens - 6]
        assert encoder.num_prefix_tokens == fam.prefix and encoder.num_tokens == fam.tokens
        assert counts == [expected]
        with torch.no_grad():
            out = fam.out(model, fam.video(4))
        state = encoder.last_merge_state
        assert state.tokens_per_layer == expected and torch.isfinite(out).all()
        if fam.prefix:  # the CLS is never merged nor dropped: it holds itself alone
            assert state.source[:, 0, 0].eq(1).all() and state.source[:, 0, 1:].eq(0).all()
            assert state.source[:, 1:, 0].eq(0).all()
            if state.size is not None:
                assert state.size[:, 0].eq(1).all()


def test_timesformer_keeps_its_grid():
    """Divided space-time: whole tubes merge, so the sequence stays 1 + HW' x T tokens in transformers' layout and
    the classifier reads the CLS."""
    model = _timesformer("eager")
    x = {"pixel_values": _video(5)}
    hidden = {}
    model.timesformer.layernorm.register_forward_hook(lambda m, a, out: hidden.update(x=out))
    with torch.no_grad():
        apply_merge(model, MergeSetting(method="tome", r=[4, 4, 2]))
        logits = model(**x).logits
    state = find_mergeable(model)[0].last_merge_state
    assert state.tokens_per_layer == [13, 9, 7] and hidden["x"].shape == (2, 1 + 6 * FRAMES, 32)
    assert state.size.shape == (2, 7, 1) and logits.shape == (2, 5)
    assert state.size[:, 1:].sum(1).eq(N_FRAME).all()  # every position of the frame, once


def test_videomae_classifier_pools_size_weighted():
    model = _videomae("sdpa")
    x = {"pixel_values": _video(6)}
    tokens = {}
    model.videomae.register_forward_hook(lambda m, a, out: tokens.update(x=out.last_hidden_state))
    with torch.no_grad():
        apply_merge(model, MergeSetting(method="vidtldr", r=R))
        logits = model(**x).logits
        size = find_mergeable(model)[0].last_merge_state.size
        weighted = model.classifier(model.fc_norm((tokens["x"] * size).sum(1) / size.sum(1)))
        plain = model.classifier(model.fc_norm(tokens["x"].mean(1)))
    assert torch.allclose(logits, weighted, atol=1e-6) and not torch.allclose(logits, plain, atol=1e-4)


def test_videomae_without_mean_pooling_protects_the_token_its_head_reads():
    cfg = transformers.VideoMAEConfig(image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2,
                                      num_labels=5, use_mean_pooling=False, **SMALL)
    model = _seeded(transformers.VideoMAEForVideoClassification, cfg)
    with torch.no_grad():
        counts = apply_merge(model, MergeSetting(method="tome", r=[8, 8, 4], trace_source=True))
        model(pixel_values=_video(7))
    state = find_mergeable(model)[0].last_merge_state
    assert counts == [[24, 16, 12]] and state.source[:, 0, 0].eq(1).all() and state.source[:, 0, 1:].eq(0).all()


@pytest.mark.parametrize("name", ["videomae", "vivit", "timesformer", "xclip_vision"])
def test_transformers_checkpointing_is_handed_over_while_merging(name):
    """transformers' per-layer checkpointing would re-run a whole layer, merge included, in the backward pass: while
    merging, the blocks recompute their two branches instead; the MergeState is updated once per forward and the
    model's own flags are back afterwards."""
    fam = FAMILIES[name]
    model = fam.build("sdpa")
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    _apply(fam, model, "sdpa", "vidtldr", R)
    encoder = find_mergeable(model)[0]
    fam.out(model, fam.video(9)).float().pow(2).mean().backward()
    assert encoder.last_merge_state.tokens_per_layer == [fam.tokens - 3, fam.tokens - 5, fam.tokens - 6]
    assert all(b.gradient_checkpointing and not b.grad_checkpointing for b in encoder.blocks)
    grads = [p.grad for p in encoder.blocks[0].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------- refusals: one line
def test_refusals_are_one_line():
    cfg = transformers.VideoMAEConfig(image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2, **SMALL)
    with pytest.raises(UnsupportedModelError) as err:
        patch(transformers.VideoMAEForPreTraining(cfg), "vidtldr", r=2)
    assert "\n" not in str(err.value) and "VideoMAEForPreTraining" in str(err.value)
    model = _timesformer("eager")
    patch(model, "tome", r=2)
    with pytest.raises(UsageError) as err:
        model(pixel_values=_video(8), output_attentions=True)
    assert "\n" not in str(err.value) and "output_attentions" in str(err.value)
    families = supported_families()
    for name in ("VideoMAE", "Vivit", "Timesformer", "XCLIPVisionModel"):
        assert any(name in f for f in families)
