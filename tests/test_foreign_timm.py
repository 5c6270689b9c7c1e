"""Merging in place on a timm VisionTransformer (``vidtldr_pl.foreign``): off is bit-identical, ``unpatch`` gives
the model back exactly, every method runs with the scheduled token counts, prefix tokens stay, average pooling is
size-weighted, and an unknown model gets one line naming it."""
from __future__ import annotations

import pytest
import torch

from timm.models import vision_transformer as timm_vit

from vidtldr_pl.foreign import UnsupportedModelError, supported_families
from vidtldr_pl.merging import METHODS, MergeSetting, apply_merge, find_mergeable, patch, unpatch

R = [3, 2, 1]


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5, reg_tokens=2,
               global_pool="avg")
    return timm_vit.VisionTransformer(**{**cfg, **kw}).eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fused", [True, False])
def test_off_and_r0_are_bit_identical_and_unpatch_restores(fused):
    model = _model()
    for block in model.blocks:
        block.attn.fused_attn = fused
    x = _images()
    ref = model(x)
    attrs = {id(m): set(m.__dict__) for m in model.modules()}
    classes = {id(m): type(m) for m in model.modules()}
    for setting in (MergeSetting(method="none"), MergeSetting(method="vidtldr", r=[0, 0, 0])):
        apply_merge(model, setting)
        assert type(model).__name__ == "MergeableVisionTransformer"
        assert torch.equal(model(x), ref)
    apply_merge(model, MergeSetting(method="vidtldr", r=R))
    assert not torch.allclose(model(x), ref)
    unpatch(model)
    assert {id(m): type(m) for m in model.modules()} == classes
    assert {id(m): set(m.__dict__) for m in model.modules()} == attrs
    assert torch.equal(model(x), ref)


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].position != "input"])  # input: no hook here
def test_every_method_merges_as_scheduled_and_keeps_the_prefix(method):
    model = _model()
    counts = apply_merge(model, MergeSetting(method=method, r=R))
    encoder = find_mergeable(model)[0]
    assert encoder.num_prefix_tokens == 3 and encoder.num_tokens == 16 + 3
    assert counts == [[16, 14, 13]]  # 19 tokens, the 3 prefix tokens protected: 16 mergeable
    with torch.no_grad():
        tokens = model.forward_features(_images())
    assert encoder.last_merge_state.tokens_per_layer == [16, 14, 13] and tokens.shape[1] == 13
    assert model(_images()).shape == (2, 5)


def test_prefix_tokens_are_the_models_own_and_never_merge():
    model = _model(global_pool="token")
    x = _images()
    with torch.no_grad():
        patch(model, "tome", r=[8, 0, 0])
        merged = model.forward_features(x)
        assert find_mergeable(model)[0].last_merge_state.size[:, :3].eq(1).all()  # CLS + 2 registers: size 1
    assert merged.shape[1] == 19 - 8


def test_average_pooling_is_size_weighted():
    model = _model()
    x = _images()
    patch(model, "vidtldr", r=R)
    with torch.no_grad():
        tokens = model.forward_features(x)
        size = find_mergeable(model)[0].last_merge_state.size
        expected = model.head(model.fc_norm((tokens[:, 3:] * size[:, 3:]).sum(1) / size[:, 3:].sum(1)))
        assert torch.allclose(model.forward_head(tokens), expected, atol=1e-6)
        assert not torch.allclose(model.forward_head(tokens), model.head(model.fc_norm(tokens[:, 3:].mean(1))))


def test_unknown_models_get_one_line_naming_them():
    with pytest.raises(UnsupportedModelError) as err:
        apply_merge(torch.nn.Sequential(torch.nn.Linear(2, 2)), MergeSetting(method="tome", r=1))
    message = str(err.value)
    assert "\n" not in message and "torch.nn.modules.container.Sequential" in message
    assert "timm VisionTransformer" in message and "timm VisionTransformer" in supported_families()


def test_timms_own_checkpointing_is_handed_over_while_merging():
    """With timm's grad_checkpointing on, a training forward through the model still merges (the merging forward
    recomputes instead) and gives the gradients of the run without checkpointing; timm's flag is put back."""
    x = _images()
    grads = []
    for checkpointing in (False, True):
        model = _model().train()
        model.set_grad_checkpointing(checkpointing)
        patch(model, "vidtldr", r=R)
        model(x).square().sum().backward()
        assert find_mergeable(model)[0].last_merge_state.tokens_per_layer == [16, 14, 13]
        assert model.grad_checkpointing is checkpointing
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
