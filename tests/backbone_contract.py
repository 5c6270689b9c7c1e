"""The merge contract as checks (timm's pattern): every registered backbone must pass them, a broken one fails.

Each check takes a model (any nn.Module with mergeable encoders) and raises AssertionError on a violation.
"""
from __future__ import annotations

import torch
from torch import nn

from vidtldr_pl.flops import encoder_flops
from vidtldr_pl.merging import METHODS, MergeSetting, apply_merge, find_mergeable, token_counts, unpatch

SMALL = {"img_size": 32, "depth": 3}
# parameter names that hold prepended tokens (timm / CLIP conventions): an encoder having them must declare them
PREFIX_PARAMETERS = {"cls_token", "class_embedding", "dist_token", "reg_token", "register_tokens"}  # contract checks do not need full-size inputs


def small_overrides(name: str) -> dict:
    """Config overrides that keep every preset's wiring but make it cheap: 32 px, 3 blocks, 2 tubelets."""
    tubelet = find_mergeable(_meta(name))[0].cfg.tubelet_size
    return {**SMALL, "num_frames": 2 * tubelet}


def _meta(name: str) -> nn.Module:
    from vidtldr_pl.backbones import create_model

    with torch.device("meta"):
        return create_model(name, **SMALL)


def _encoder(model: nn.Module) -> nn.Module:
    encoders = find_mergeable(model)
    assert encoders, f"{type(model).__name__} has no MergeableEncoder"
    return encoders[0]


def _setting(encoder: nn.Module, method: str = "vidtldr", **kw) -> MergeSetting:
    n = encoder.num_tokens
    return MergeSetting(method=method, r=[n // 4, n // 8], **kw)


def _run(encoder: nn.Module, video: torch.Tensor):
    state = encoder.new_merge_state()
    return encoder(video, state), state


def check_round_trip(model: nn.Module) -> None:
    """patch changes the token counts to the schedule's; unpatch restores the unmerged outputs exactly."""
    enc = _encoder(model).eval()
    video = torch.randn_like(enc.example_input(2))
    with torch.no_grad():
        plain, plain_state = _run(enc, video)
        expected = apply_merge(model, _setting(enc))[0]
        merged, state = _run(enc, video)
        assert state.tokens_per_layer == expected, (state.tokens_per_layer, expected)
        assert merged.shape[1] == expected[-1] < plain.shape[1]
        unpatch(model)
        again, again_state = _run(enc, video)
    assert again_state.tokens_per_layer == plain_state.tokens_per_layer == [enc.num_tokens] * len(enc.blocks)
    assert torch.equal(again, plain), "unpatch did not restore the unmerged encoder"


def check_explicit_equals_fused(model: nn.Module, rtol: float = 1e-5) -> None:
    """With vid-TLDR merging, the explicit (reference) and fused attention paths give the same tokens (up to float
    rounding: max error below rtol x the largest output)."""
    enc = _encoder(model).eval()
    video = torch.randn_like(enc.example_input(2))
    outs = {}
    with torch.no_grad():
        for mode in ("explicit", "fused"):
            apply_merge(model, _setting(enc, attention=mode))
            outs[mode], _ = _run(enc, video)
    unpatch(model)
    assert outs["explicit"].shape == outs["fused"].shape
    err = (outs["explicit"] - outs["fused"]).abs().max().item()
    scale = outs["explicit"].abs().max().item()
    assert err < rtol * max(scale, 1.0), f"explicit vs fused differ by {err} (outputs up to {scale})"


def check_gradients(model: nn.Module) -> None:
    """Gradients flow through merged tokens to the patch embedding and every block."""
    enc = _encoder(model).train()
    apply_merge(model, _setting(enc))
    video = torch.randn_like(enc.example_input(2))
    out, _ = _run(enc, video)
    out.float().pow(2).mean().backward()
    unpatch(model)
    named = dict(enc.named_parameters())
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", f"blocks.{len(enc.blocks) - 1}.mlp.fc2.weight"):
        grad = named[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"no gradient at {name}"
    model.zero_grad(set_to_none=True)


def check_prefix_protected(model: nn.Module) -> None:
    """The encoder's prefix (CLS) tokens are never merged nor dropped, whatever the method (every registered one):
    each stays first and holds only itself (source tracing), and every method removes the schedule's tokens."""
    enc = _encoder(model).eval()
    prefix = enc.num_prefix_tokens
    declared_by_parameters = sum(
        1 if p.ndim == 1 else p.shape[-2] for n, p in enc.named_parameters() if n.split(".")[-1] in PREFIX_PARAMETERS
    )
    assert prefix >= declared_by_parameters, (
        f"{type(enc).__name__} has {declared_by_parameters} prefix token parameter(s) but declares "
        f"num_prefix_tokens = {prefix}: merging would not protect them")
    video = torch.randn_like(enc.example_input(2))
    for method in METHODS:
        apply_merge(model, _setting(enc, method=method, trace_source=True))
        with torch.no_grad():
            _, state = _run(enc, video)
        expected = token_counts(list(enc.merge_settings.schedule), enc.num_tokens, prefix)
        assert state.tokens_per_layer == expected, (method, state.tokens_per_layer, expected)
        for p in range(prefix):
            src = state.source[:, p]
            assert torch.all(src[:, p] == 1) and torch.all(src.sum(dim=-1) == 1), f"{method} merged prefix token {p}"
    unpatch(model)


def check_flops(model: nn.Module) -> None:
    """The FLOPs report runs, and merging lowers the count."""
    enc = _encoder(model)
    plain = encoder_flops(enc)
    apply_merge(model, _setting(enc))
    merged = encoder_flops(enc)
    unpatch(model)
    assert plain.flops > merged.flops > 0 and merged.merge_flops > 0
    assert plain.tokens_per_layer == [enc.num_tokens] * len(enc.blocks)


def check_compiles(model: nn.Module) -> None:
    """The merged encoder compiles as one graph (fullgraph) and matches eager."""
    enc = _encoder(model).eval()
    apply_merge(model, _setting(enc, method="tome"))
    video = torch.randn_like(enc.example_input(1))
    with torch.no_grad():
        eager, _ = _run(enc, video)
        compiled = torch.compile(lambda v: enc(v, enc.new_merge_state()), fullgraph=True)(video)
    unpatch(model)
    torch._dynamo.reset()
    assert (eager - compiled).abs().max().item() < 1e-4


CHECKS = {
    "round_trip": check_round_trip,
    "explicit_equals_fused": check_explicit_equals_fused,
    "gradients": check_gradients,
    "prefix_protected": check_prefix_protected,
    "flops": check_flops,
}
