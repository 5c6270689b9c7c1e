"""Token-dropping methods (random_drop, saliency_drop, repshift_drop) and vid-TLDR with the Representation-Shift
saliency: token counts, prefix protection, determinism, drop semantics, scores against brute-force references."""
from __future__ import annotations

import pytest
import torch

from vidtldr_pl.backbones.layers import ViTConfig, ViTEncoder
from vidtldr_pl.merging import (
    METHODS, AttentionInfo, MergeSetting, MergeState, RandomDrop, RepShiftDrop, SaliencyDrop, VidTLDR,
    VidTLDRRepShift, apply_merge, bipartite_soft_matching, build_method, drop_lowest, find_mergeable, patch, sharpen,
    token_counts, vidtldr_saliency,
)
from vidtldr_pl.merging.methods import random_keys

NEW = ["random_drop", "saliency_drop", "repshift_drop", "vidtldr_repshift"]
DROPS = ["random_drop", "saliency_drop", "repshift_drop"]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _probs(b: int, n: int, h: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(b, h, n, n, generator=_g(seed)) * 4, dim=-1)


@pytest.fixture(scope="module")
def encoder() -> ViTEncoder:
    """A 4-block encoder (64 tokens) with weights large enough for sharp attention and uneven MLP shifts; a CLS
    token so that prefix protection is exercised."""
    enc = ViTEncoder(ViTConfig(embed_dim=32, depth=4, num_heads=4, img_size=32, num_frames=4, patch_size=8,
                               class_token=True, pos_embed="learned")).eval()
    g = _g(3)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise / p[0].numel() ** 0.5 if p.ndim >= 2 else (1 if "norm" in name else 0) + noise / 4)
    return enc


def _video(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=_g(seed))


def _run(enc: ViTEncoder, video: torch.Tensor) -> tuple[torch.Tensor, MergeState]:
    state = enc.new_merge_state()
    with torch.no_grad():
        return enc(video, state), state


# ------------------------------------------------------------------------------------------------ registry
def test_registered_by_name():
    for name in NEW:
        assert name in METHODS and build_method(name).name == name
    assert isinstance(build_method("Random-Drop"), RandomDrop) and isinstance(build_method("RepShift_Drop"), RepShiftDrop)
    assert isinstance(build_method("vidtldr", saliency="repshift"), VidTLDR)
    assert build_method("vidtldr_repshift").saliency == "repshift"


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: VidTLDR(saliency="flow"), "unknown vid-TLDR saliency 'flow'"),
    (lambda: VidTLDR(position="mlp"), "position must be 'attn'"),
    (lambda: VidTLDR(metric="values"), "unknown vid-TLDR metric 'values'"),
    (lambda: VidTLDRRepShift(position="mlp", metric="keys"), "position must be 'attn'"),
    (lambda: RepShiftDrop(position="after"), "unknown merge position 'after'"),
    (lambda: RandomDrop(seed=0.5), "seed must be an integer"),
    (lambda: SaliencyDrop(chunk_size=0), "chunk_size"),
    (lambda: build_method("random_dropp"), "unknown merge method 'random_dropp'"),
])
def test_bad_options(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_what_each_method_asks_of_the_block():
    """Attention info only for attention methods, the shift only for shift methods: the others pay for neither."""
    asks = {name: (build_method(name).needs_attention, build_method(name).needs_shift) for name in METHODS}
    assert asks == {"tome": (True, False), "vidtldr": (True, False), "random": (False, False),
                    "vidtldr_repshift": (False, True), "random_drop": (False, False),
                    "saliency_drop": (True, False), "repshift_drop": (False, True),
                    "frame_stride": (False, False), "resize": (False, False), "rlt": (False, False),
                    "topk": (True, False), "evit": (True, False), "sta": (True, False),
                    "stim_temporal": (True, False), "tome_video": (True, False), "pitome": (True, False),
                    "threshold": (True, False)}
    assert build_method("repshift_drop").position == "mlp" and build_method("vidtldr_repshift").position == "attn"


# ------------------------------------------------------------------------------------------------ drop_lowest
def test_drop_lowest_equals_brute_force():
    score = torch.randint(0, 5, (3, 40), generator=_g(1)).float()  # many ties
    for protected in (0, 1, 3):
        plan = drop_lowest(score[..., None], 12, protected)
        for b in range(3):
            ranked = sorted(range(protected, 40), key=lambda i: (score[b, i].item(), i))  # ties: earlier first
            expected = sorted(range(protected)) + sorted(ranked[12:])
            assert plan.keep_idx[b, :, 0].tolist() == expected


# ------------------------------------------------------------------------------------------------ method level
@pytest.mark.parametrize("name", DROPS)
def test_drop_semantics(name):
    """Exact counts, kept rows unchanged and in order, prefix kept, dropped content nowhere (sources, rows)."""
    b, n, c, r, protected = 2, 30, 8, 9, 2
    x = torch.randn(b, n, c, generator=_g(0))
    shift = torch.rand(b, n, 1, generator=_g(1))
    state = MergeState(trace_source=True, shift=shift)
    method = build_method(name, protected=protected)
    y = method(x, state, AttentionInfo(probs=_probs(b, n)), r)
    assert y.shape == (b, n - r, c) and state.source.shape == (b, n - r, n) and state.size is None
    for i in range(b):
        kept = state.source[i].argmax(dim=-1)
        assert torch.equal(state.source[i].sum(dim=-1), torch.ones(n - r))  # each output row is one input token
        assert kept.tolist() == sorted(kept.tolist()) and kept[:protected].tolist() == list(range(protected))
        assert torch.equal(y[i], x[i, kept])  # unchanged, no mixing
        assert torch.equal(state.shift[i], shift[i, kept])  # the shift follows its tokens
        dropped = sorted(set(range(n)) - set(kept.tolist()))
        assert len(dropped) == r and torch.all(state.source[i][:, dropped] == 0)
        assert not any(torch.equal(row, x[i, d]) for row in y[i] for d in dropped)


def test_random_drop_is_deterministic_for_a_seed():
    x = torch.randn(3, 50, 4, generator=_g(0))

    def kept(seed: int, layer: int = 0) -> torch.Tensor:
        state = MergeState(trace_source=True, tokens_per_layer=[50] * layer)
        RandomDrop(seed=seed)(x, state, None, 20)
        return state.source.argmax(dim=-1)

    assert torch.equal(kept(7), kept(7)) and torch.equal(kept(7, 2), kept(7, 2))
    assert not torch.equal(kept(7), kept(8)) and not torch.equal(kept(7), kept(7, 1))
    assert not torch.equal(kept(7)[0], kept(7)[1])  # samples of a batch draw apart
    rng = torch.get_rng_state()
    keys = random_keys(7, 0, 3, 50)
    assert torch.equal(rng, torch.get_rng_state())  # no generator involved: a hash of (seed, layer, row, position)
    assert keys.dtype == torch.int64 and keys.min() >= 0 and keys.max() < 2**32 and keys.unique().numel() == 150


def test_saliency_drop_drops_the_least_salient():
    b, n, r = 2, 40, 13
    x = torch.randn(b, n, 8, generator=_g(0))
    probs = _probs(b, n, seed=2)
    state = MergeState(trace_source=True)
    SaliencyDrop()(x, state, AttentionInfo(probs=probs), r)
    # brute force: the negative entropy of the head-mean attention of each token, lowest r dropped
    p = probs.mean(dim=1).double()
    raw = (p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=-1)
    sharp = vidtldr_saliency(AttentionInfo(probs=probs))[..., 0]
    for i in range(b):
        expected = sorted(sorted(range(n), key=lambda t: raw[i, t].item())[r:])
        kept = state.source[i].argmax(dim=-1).tolist()
        assert kept == expected
        dropped = sorted(set(range(n)) - set(kept))
        assert sharp[i, dropped].max() <= sharp[i, kept].min()  # consistent with vid-TLDR's sharpened score
    # the q / k path (fused attention) drops the same tokens
    q, k = torch.randn(b, 4, n, 16, generator=_g(4)), torch.randn(b, 4, n, 16, generator=_g(5))
    s1, s2 = MergeState(trace_source=True), MergeState(trace_source=True)
    SaliencyDrop()(x, s1, AttentionInfo(probs=(q @ k.transpose(-1, -2)).softmax(-1)), r)
    SaliencyDrop(chunk_size=7)(x, s2, AttentionInfo(q=q, k=k), r)
    assert torch.equal(s1.source, s2.source)


def test_vidtldr_repshift_weights_sources_by_the_sharpened_shift():
    b, n = 2, 30
    x = torch.randn(b, n, 8, generator=_g(0))
    shift = torch.rand(b, n, 1, generator=_g(1))
    plan = VidTLDRRepShift().plan(x, None, 6, MergeState(shift=shift))
    entropy_plan = VidTLDR().plan(x, AttentionInfo(probs=_probs(b, n)), 6)
    assert torch.equal(plan.src_idx, entropy_plan.src_idx)  # same matching (hidden state), other weights
    assert torch.equal(plan.src_weight, sharpen(shift)[:, ::2].gather(1, plan.src_idx))
    with pytest.raises(ValueError, match="needs the representation shift"):
        VidTLDRRepShift().plan(x, None, 6, MergeState())


def test_vidtldr_keys_metric_matches_as_tome_and_weights_by_the_saliency():
    """metric="keys": the matching of ToMe (head-mean keys), the sources weighted by vid-TLDR's saliency."""
    b, n = 2, 30
    x = torch.randn(b, n, 8, generator=_g(0))
    k = torch.randn(b, 2, n, 4, generator=_g(2))
    shift = torch.rand(b, n, 1, generator=_g(1))
    method = VidTLDRRepShift(metric="keys")
    assert method.needs_attention and method.needs_shift
    plan = method.plan(x, AttentionInfo(k=k), 6, MergeState(shift=shift))
    reference = bipartite_soft_matching(k.mean(dim=1), 6, sort_unmerged=True, affine_scores=True)
    assert torch.equal(plan.src_idx, reference.src_idx) and torch.equal(plan.dst_idx, reference.dst_idx)
    assert torch.equal(plan.src_weight, sharpen(shift)[:, ::2].gather(1, plan.src_idx))
    with pytest.raises(ValueError, match="needs the block's keys"):
        method.plan(x, None, 6, MergeState(shift=shift))


# ------------------------------------------------------------------------------------------------ in the block
class Spy:
    """Wraps a method instance's plan to record (x, state.shift) as the method saw them."""

    def __init__(self, method) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        plan = method.plan

        def spy(x, attn, r, state=None):
            self.seen.append((x.clone(), None if state is None or state.shift is None else state.shift.clone()))
            return plan(x, attn, r, state)

        method.plan = spy


def _by_hand(enc: ViTEncoder, video: torch.Tensor, blocks: int) -> list[dict[str, torch.Tensor]]:
    """Each block's input, post-attention and output tokens, computed without any merging."""
    x, out = enc.embed(video), []
    with torch.no_grad():
        for block in enc.blocks[:blocks]:
            mid = x + block.attn(block.norm1(x))[0]
            after = mid + block.mlp(block.norm2(mid))
            out.append({"in": x, "mid": mid, "out": after})
            x = after
    return out


def test_repshift_score_is_the_l2_distance_across_the_mlp(encoder):
    """position "mlp": block i's score is ||x_after_mlp - x_before_mlp||_2 of its own tokens; position "attn": the
    previous block's, and in the first block the distance across its attention."""
    video = _video()
    ref = _by_hand(encoder, video, 2)
    cases = [  # position, schedule, (tokens the method sees, hand-computed shift) in the one merging block
        ("mlp", [1], ref[0]["out"], ref[0]["out"] - ref[0]["mid"]),
        ("mlp", [0, 1], ref[1]["out"], ref[1]["out"] - ref[1]["mid"]),
        ("attn", [1], ref[0]["mid"], ref[0]["mid"] - ref[0]["in"]),
        ("attn", [0, 1], ref[1]["mid"], ref[0]["out"] - ref[0]["mid"]),
    ]
    for position, r, tokens, delta in cases:
        method = RepShiftDrop(position=position, protected=1)
        spy = Spy(method)
        patch(encoder, method, r=r)
        _run(encoder, video)
        (seen_x, seen_shift), = spy.seen
        assert torch.allclose(seen_x, tokens, atol=1e-5), (position, r)
        assert torch.allclose(seen_shift, delta.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6), (position, r)
    patch(encoder, "none")


def test_repshift_drop_in_the_encoder_drops_the_smallest_shift(encoder):
    video = _video(1)
    method = RepShiftDrop(protected=1)
    spy = Spy(method)
    patch(encoder, method, r=[10, 5], trace_source=True)
    out, state = _run(encoder, video)
    assert state.tokens_per_layer == token_counts([10, 5, 0, 0], encoder.num_tokens, 1) == [55, 50, 50, 50]
    x0, shift0 = spy.seen[0]
    hand = _by_hand(encoder, video, 1)[0]
    assert torch.allclose(shift0, (hand["out"] - hand["mid"]).norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    first_kept = drop_lowest(shift0, 10, protected=1).keep_idx[..., 0]
    second_kept = drop_lowest(spy.seen[1][1], 5, protected=1).keep_idx[..., 0]
    expected_sources = first_kept.gather(1, second_kept)
    assert torch.equal(state.source.argmax(dim=-1), expected_sources)
    assert torch.all(state.source[:, 0, 0] == 1)  # CLS kept
    patch(encoder, "none")


@pytest.mark.parametrize("name", [*NEW, "tome", "vidtldr"])
def test_counts_prefix_and_what_the_block_computes(encoder, name, monkeypatch):
    asked = []
    real = type(encoder.blocks[0].attn).forward

    def forward(self, x, bias=None, want_info=False):
        asked.append(want_info)
        return real(self, x, bias, want_info)

    monkeypatch.setattr(type(encoder.blocks[0].attn), "forward", forward)
    patch(encoder, name, r=[12, 6, 0.1], trace_source=True)
    for mode in ("explicit", "fused"):
        encoder.set_attention(mode)
        asked.clear()
        out, state = _run(encoder, _video(2))
        assert state.tokens_per_layer == token_counts([12, 6, 0.1, 0], 65, 1) == [53, 47, 43, 43]
        assert out.shape == (2, 43, 32)
        assert torch.all(state.source[:, 0, 0] == 1) and torch.all(state.source[:, 0].sum(-1) == 1)  # CLS alone
        method = encoder.merge_settings.method
        assert asked == [method.needs_attention] * 3 + [False]  # attention info only where a method asks for it
        assert state.record_shift == method.needs_shift and (state.shift is not None) == method.needs_shift
    encoder.set_attention("fused")
    patch(encoder, "none")


@pytest.mark.parametrize("name", NEW)
def test_fused_equals_explicit(encoder, name):
    """The new methods give the same tokens under explicit and fused attention (no attention map needed by the
    shift methods; the saliency drop's q / k path equals the map's)."""
    patch(encoder, name, r=[12, 6, 0.1], trace_source=True)
    outs = {}
    for mode in ("explicit", "fused"):
        encoder.set_attention(mode)
        outs[mode] = _run(encoder, _video(3))
    encoder.set_attention("fused")
    patch(encoder, "none")
    (ref, s_ref), (out, s_out) = outs["explicit"], outs["fused"]
    assert (s_ref.source - s_out.source).abs().max() < 1e-5 and (ref - out).abs().max() < 1e-4  # vid-TLDR: weights


def test_gradients_flow_through_drops(encoder):
    patch(encoder, "repshift_drop", r=[12, 6])
    encoder.train()
    video = _video().requires_grad_(True)
    encoder(video, encoder.new_merge_state()).pow(2).mean().backward()
    encoder.eval()
    patch(encoder, "none")
    assert video.grad is not None and video.grad.abs().sum() > 0
    encoder.zero_grad(set_to_none=True)


def test_repshift_saliency_pays_no_saliency_pass():
    """FLOPs (meta device): vid-TLDR with the shift saliency under fused attention costs only its matching, as
    entropy vid-TLDR does when it reuses an explicit map; entropy vid-TLDR under fused attention adds the q / k
    pass. repshift_drop runs each pruning block's MLP on all its tokens (it prunes after the MLP)."""
    from vidtldr_pl.backbones import create_model
    from vidtldr_pl.flops.report import flops_table

    fused = flops_table("umt_tiny", 4, "16,8", ["tome", "vidtldr", "vidtldr_repshift", "random_drop", "repshift_drop"],
                        "fused", "meta")
    explicit = flops_table("umt_tiny", 4, "16,8", ["vidtldr"], "explicit", "meta")
    assert fused["vidtldr_repshift"].merge_flops == explicit["vidtldr"].merge_flops < fused["vidtldr"].merge_flops
    assert fused["vidtldr_repshift"].encoder_gmacs == fused["tome"].encoder_gmacs == fused["random_drop"].encoder_gmacs
    assert fused["random_drop"].merge_flops == 0
    with torch.device("meta"):
        cfg = find_mergeable(create_model("umt_tiny"))[0].cfg
    mlp_macs = 2 * cfg.embed_dim * int(cfg.embed_dim * cfg.mlp_ratio)  # per token: fc1 + fc2
    extra = (fused["repshift_drop"].encoder_gmacs - fused["random_drop"].encoder_gmacs) * 1e9
    assert extra == pytest.approx((16 + 8) * mlp_macs)


def test_repshift_with_keys_costs_tomes_flops():
    """vid-TLDR RepShift matching on ToMe's keys: ToMe's GFLOPs exactly (the shift's L2 norm is not a matmul);
    on the hidden state it adds the C-wide matching."""
    from vidtldr_pl.backbones import create_model
    from vidtldr_pl.flops import encoder_flops

    flops = {}
    for name, method, options in (("tome", "tome", {}), ("keys", "vidtldr_repshift", {"metric": "keys"}),
                                  ("hidden", "vidtldr_repshift", {})):
        with torch.device("meta"):
            enc = find_mergeable(create_model("umt_tiny"))[0]
        apply_merge(enc, MergeSetting(method=method, r=[16, 8], method_options=options))
        flops[name] = encoder_flops(enc).gflops
    assert flops["keys"] == flops["tome"] < flops["hidden"]
