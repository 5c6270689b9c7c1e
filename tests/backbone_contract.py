"""The merge contract and the model interfaces as checks (timm's pattern): every registered backbone must pass them,
a broken one fails.

Each check takes a model (any nn.Module with mergeable encoders) and raises AssertionError on a violation.
"""
from __future__ import annotations

import inspect
from typing import Protocol

import torch
from torch import nn

from vidtldr_pl.backbones.interfaces import (INTERFACES, DualEncoder, FusionModel, VideoClassifier, VideoEncoder,
                                             VideoQAModel, ZeroShotClassifier)
from vidtldr_pl.flops import encoder_flops
from vidtldr_pl.merging import METHODS, MergeSetting, apply_merge, find_mergeable, token_counts, unpatch
from vidtldr_pl.merging.input_reduction import is_input_method

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
        n = enc.num_tokens
        if is_input_method(enc.merge_settings.method):  # RLT, frame_stride, resize: the tokens they leave
            n = enc.merge_settings.method.tokens_entering(enc, video)
        expected = token_counts(list(enc.merge_settings.schedule), n, prefix)
        assert state.tokens_per_layer == expected, (method, state.tokens_per_layer, expected)
        for p in range(prefix):
            src = state.source[:, p]
            assert torch.all(src[:, p] == 1) and torch.all(src.sum(dim=-1) == 1), f"{method} merged prefix token {p}"
    unpatch(model)


def check_methods_off(model: nn.Module) -> None:
    """Every block method of the table at r = 0 leaves the encoder's output bit for bit the unmerged one (the input
    reductions do not use r: method "none" is their off)."""
    enc = _encoder(model).eval()
    video = torch.randn_like(enc.example_input(2))
    unpatch(model)
    with torch.no_grad():
        plain, _ = _run(enc, video)
        for method, cls in METHODS.items():
            if cls.position == "input":
                continue
            apply_merge(model, MergeSetting(method=method, r=[0] * len(enc.blocks)))
            out, state = _run(enc, video)
            assert torch.equal(out, plain), f"{method} at r = 0 changed the output"
            assert state.tokens_per_layer == [enc.num_tokens] * len(enc.blocks), method
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


# ------------------------------------------------------------------------------------------------- interfaces
def protocol_members(proto: type) -> tuple[dict[str, inspect.Signature], set[str]]:
    """(methods -> signature, data attributes) a Protocol declares, its Protocol bases' included."""
    methods: dict[str, inspect.Signature] = {}
    data: set[str] = set()
    for cls in reversed(proto.__mro__):
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        data |= set(getattr(cls, "__annotations__", {}))
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and (not name.startswith("_") or name == "__call__"):
                methods[name] = inspect.signature(value)
    return methods, data


def check_signatures(obj: object, proto: type) -> None:
    """Every method of ``proto`` exists on obj and accepts the Protocol's parameters by name; obj's own required
    parameters are all the Protocol's (``__call__`` is read from ``forward`` for modules)."""
    methods, data = protocol_members(proto)
    for attr in data:
        assert hasattr(obj, attr), f"{type(obj).__name__} lacks {proto.__name__}.{attr}"
    for name, wanted in methods.items():
        impl = obj.forward if name == "__call__" and isinstance(obj, nn.Module) else getattr(obj, name, None)
        assert callable(impl), f"{type(obj).__name__} lacks {proto.__name__}.{name}"
        have = inspect.signature(impl).parameters
        names = [n for n in wanted.parameters if n != "self"]
        missing = [n for n in names if n not in have]
        assert not missing, f"{type(obj).__name__}.{name} lacks parameters {missing} of {proto.__name__}.{name}"
        extra = [n for n, p in have.items() if p.default is inspect.Parameter.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in names]
        assert not extra, f"{type(obj).__name__}.{name} requires {extra}, which {proto.__name__}.{name} does not pass"


def check_declared(obj: object) -> tuple[type, ...]:
    """obj's class declares ``implements`` (interfaces of vidtldr_pl.backbones.interfaces) and is an instance of each,
    with compatible signatures; returns the declared interfaces."""
    declared = vars(type(obj)).get("implements") or next(
        (vars(c)["implements"] for c in type(obj).__mro__ if "implements" in vars(c)), ())
    assert declared, f"{type(obj).__name__} declares no `implements = (...)` (see backbones/interfaces.py)"
    for proto in declared:
        assert proto in INTERFACES, f"{type(obj).__name__} declares {proto!r}, not one of backbones.interfaces"
        assert isinstance(obj, proto), f"{type(obj).__name__} declares {proto.__name__} but is not one"
        check_signatures(obj, proto)
    return tuple(declared)


def _ids(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 60, (batch, length), generator=generator)
    ids[:, 0] = 2  # a [CLS] / BOS-like first token
    return ids, torch.ones_like(ids)


def check_interfaces(model: nn.Module) -> None:
    """The model and its encoders declare their interfaces and satisfy them; a forward through each declared
    interface's methods gives the documented shapes."""
    declared = check_declared(model)
    encoders = find_mergeable(model)
    for enc in encoders:
        assert VideoEncoder in check_declared(enc), f"{type(enc).__name__} does not declare VideoEncoder"
        enc.set_grad_checkpointing(True)
        enc.set_grad_checkpointing(False)
        enc.set_attention("explicit")
        enc.set_attention("fused")
    model.eval()
    g = torch.Generator().manual_seed(0)
    video = torch.randn(encoders[0].example_input(2).shape, generator=g)  # (B, 3, T, H, W)
    clip = video.permute(0, 2, 1, 3, 4)  # (B, T, 3, H, W)
    b = video.shape[0]
    with torch.no_grad():
        if any(issubclass(p, (DualEncoder, VideoQAModel)) for p in declared):
            tokens, pooled = model.encode_vision(clip)
            assert tokens.ndim == 3 and tokens.shape[0] == b and pooled.shape == (b, tokens.shape[-1]), (
                tokens.shape, pooled.shape)
        if any(issubclass(p, DualEncoder) for p in declared):
            ids, mask = _ids(b, 8, g)
            text = model.text_embed(model.encode_text(ids, mask))
            vision = model.vision_embed(pooled)
            assert text.shape == vision.shape and text.shape[0] == b
            for emb in (text, vision):
                torch.testing.assert_close(emb.norm(dim=-1), torch.ones(b))
            assert model.temperature().numel() == 1 and model.temperature(clamp=True).item() > 0
        if FusionModel in declared:
            hidden = model.encode_text(ids, mask)
            logits = model.itm_logits(hidden, mask, tokens)
            assert logits.shape == (b, 2)
            memory = model.fusion_memory(tokens)
            assert sum(k[0].numel() + v[0].numel() for k, v in memory) == model.fusion_memory_numel(tokens.shape[1])
            grouped = model.itm_logits(hidden, mask, None, memory=memory, memory_index=torch.arange(b))
            torch.testing.assert_close(grouped, logits, atol=1e-5, rtol=1e-4)
        if ZeroShotClassifier in declared:
            feats = model.set_class_names(["walking", "running", "jumping"])
            assert feats.shape[0] == 3 and model.class_names == ["walking", "running", "jumping"]
        if any(issubclass(p, VideoClassifier) for p in declared):
            logits = model(video)
            assert logits.ndim == 2 and logits.shape[0] == b
        if VideoQAModel in declared:
            q_ids, q_mask = _ids(b, 6, g)
            states = model.encode_question(tokens, q_ids, q_mask)
            assert states.shape[:2] == (b, 6)
            a_ids, a_mask = _ids(5, 4, g)
            loss = model.answer_loss(states, q_mask, a_ids[:4], a_mask[:4], torch.tensor([1, 3]), torch.ones(4))
            assert loss.ndim == 0 and torch.isfinite(loss)
            index, probs = model.rank_answers(states, q_mask, a_ids, a_mask, k=3)
            assert index.shape == probs.shape == (b, 3)


CHECKS = {
    "interfaces": check_interfaces,
    "round_trip": check_round_trip,
    "explicit_equals_fused": check_explicit_equals_fused,
    "gradients": check_gradients,
    "prefix_protected": check_prefix_protected,
    "methods_off": check_methods_off,
    "flops": check_flops,
}
