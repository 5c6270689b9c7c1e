"""transformers Dinov2Model / Dinov2WithRegistersModel merged in place (vidtldr_pl.foreign.hf_dinov2): bit-identity
with merging off, every method on the schedule, the branch decomposition, prefix protection, size-aware pooling."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vidtldr_pl.foreign.hf_dinov2  # noqa: E402, F401  (registers the family)
from vidtldr_pl.foreign import size_weighted_mean  # noqa: E402
from vidtldr_pl.merging import METHODS, MergeSetting, apply_merge, unpatch  # noqa: E402

ATTN = ["eager", "sdpa"]


def small_config(attn: str, registers: int = 0, **kw):
    cls = transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config
    extra = {"num_register_tokens": registers} if registers else {}
    cfg = cls(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56, patch_size=14,
              layerscale_value=0.5, **extra, **kw)
    cfg._attn_implementation = attn
    return cfg


def small_model(attn: str, registers: int = 0) -> torch.nn.Module:
    cls = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
    return cls(small_config(attn, registers)).eval()


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("registers", [0, 2])
def test_merging_off_is_bit_identical(attn: str, registers: int) -> None:
    model = small_model(attn, registers)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model(pixel_values=x)
        apply_merge(model, MergeSetting(method="none"))
        off = model(pixel_values=x)
        apply_merge(model, MergeSetting(method="vidtldr", r=0))
        zero = model(pixel_values=x)
    assert type(model).__name__.startswith("Mergeable")
    for out in (off, zero):
        assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
        assert torch.equal(out.pooler_output, ref.pooler_output)
    unpatch(model)
    assert type(model).__name__ in ("Dinov2Model", "Dinov2WithRegistersModel")
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).last_hidden_state, ref.last_hidden_state)


@pytest.mark.parametrize("attn", ATTN)
def test_merging_forward_matches_the_layers(attn: str) -> None:
    """The adapter's branches (norm1, q / k / v, scale, o_proj, layer-scale, MLP) are the layer's own: with a merge
    only in the last block, the first three blocks' outputs equal the unpatched ones."""
    model = small_model(attn)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model(pixel_values=x, output_hidden_states=True).hidden_states
        apply_merge(model, MergeSetting(method="tome", r=[0, 0, 0, 3]))
        out = model(pixel_values=x, output_hidden_states=True)
    for layer in range(1, 4):  # hidden_states[0] is the embedding output
        torch.testing.assert_close(out.hidden_states[layer], ref[layer], atol=1e-5, rtol=1e-5)
    assert out.last_hidden_state.shape == (2, 17 - 3, 64)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].position != "input"))  # no input hook
def test_every_method_reduces_as_scheduled(attn: str, method: str) -> None:
    registers = 2 if method in ("vidtldr", "random_drop") else 0
    model = small_model(attn, registers)
    prefix = 1 + registers
    x = torch.randn(2, 3, 56, 56)
    counts = apply_merge(model, MergeSetting(method=method, r=[2, 2, 1, 1]))
    n0 = 16 + prefix
    assert counts == [[n0 - 2, n0 - 4, n0 - 5, n0 - 6]]
    with torch.no_grad():
        out = model(pixel_values=x)
    state = model.last_merge_state
    assert state.tokens_per_layer == counts[0]
    assert out.last_hidden_state.shape == (2, n0 - 6, 64)
    assert torch.isfinite(out.last_hidden_state).all()
    if state.size is not None:  # prefix tokens are never merged
        assert torch.equal(state.size[:, :prefix, 0], torch.ones(2, prefix, dtype=state.size.dtype))


def test_classifier_mean_is_size_weighted() -> None:
    cfg = small_config("sdpa", num_labels=3)
    model = transformers.Dinov2ForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 56, 56)
    apply_merge(model, MergeSetting(method="tome", r=3))
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        tokens = model.dinov2(pixel_values=x).last_hidden_state
        state = model.dinov2.last_merge_state
        assert state.size is not None and tokens.shape[1] == 17 - 12
        want = model.classifier(torch.cat([tokens[:, 0], size_weighted_mean(tokens, state, skip=1)], dim=-1))
        plain = model.classifier(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1))
    torch.testing.assert_close(logits, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(logits, plain, atol=1e-4)
    unpatch(model)
    assert not model.classifier._forward_pre_hooks and not model.dinov2._forward_hooks


def test_unsupported_dinov2_backbone_one_line() -> None:
    from vidtldr_pl.foreign import UnsupportedModelError
    model = transformers.Dinov2Backbone(small_config("sdpa"))
    with pytest.raises(UnsupportedModelError) as err:
        apply_merge(model, MergeSetting(method="tome", r=2))
    assert "\n" not in str(err.value) and "Dinov2Backbone" in str(err.value) and "Dinov2Model" in str(err.value)


def test_transformers_checkpointing_is_handed_over_while_merging() -> None:
    """With transformers' activation checkpointing on, a merging training step runs the merging forward's own
    recomputation and gives the gradients of one without checkpointing; the layers' flags are put back."""
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = small_model("sdpa").train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        apply_merge(model, MergeSetting(method="tome", r=[4, 4, 2, 0]))
        model(pixel_values=x).last_hidden_state.square().sum().backward()
        assert all(layer.gradient_checkpointing is checkpointing for layer in model.encoder.layer)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
