"""Two implementations agree: open_clip's ViT-B-16 (random weights, merged in place by ``vidtldr_pl.foreign``) run
per frame, and our ``vificlip_b16`` image tower loaded with the same weights, both patched with vid-TLDR at the same
r, give the same frame embeddings (within 1e-4) and the same merge assignment (token sizes, tokens per layer, the
source of every merged token)."""
from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from vidtldr_pl.backbones import create_model  # noqa: E402
from vidtldr_pl.backbones.vificlip import to_vificlip_layout  # noqa: E402
from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable, unpatch  # noqa: E402

B, T = 1, 2  # two frames: full ViT-B/16 size, kept small for the CPU


@pytest.fixture(scope="module")
def pair():
    """(open_clip ViT-B-16, our vificlip_b16 with its weights): OpenAI's ViT-B/16 wiring (QuickGELU), random
    weights with non-trivial norms and biases."""
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        for p in ref.visual.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    ours = create_model("vificlip_b16", num_frames=T).eval()
    state, _ = to_vificlip_layout(ref.state_dict())
    ours.load_state_dict(state, strict=True)
    return ref, ours


def _video() -> torch.Tensor:
    return torch.randn(B, 3, T, 224, 224, generator=torch.Generator().manual_seed(1))


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B x T, 3, H, W), frame-major as our frame-wise encoder orders them."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


@pytest.mark.parametrize("attention", ["fused", "explicit"])
def test_open_clip_vit_b16_agrees_with_vificlip_b16_under_vidtldr(pair, attention):
    ref, ours = pair
    video = _video()
    setting = MergeSetting(method="vidtldr", r=12, trace_source=True, attention=attention)
    try:
        with torch.no_grad():
            plain = ref.encode_image(_frames(video))
            if attention == "fused":  # unmerged, the towers are the same (test_vificlip checks it on a small CLIP)
                torch.testing.assert_close(ours.frame_features(video).reshape(B * T, -1), plain, atol=1e-4, rtol=0)
            counts_ref = apply_merge(ref, setting)
            counts_ours = apply_merge(ours, setting)
            assert counts_ref == counts_ours == [[197 - 12 * (i + 1) for i in range(12)]]
            theirs = ref.encode_image(_frames(video))
            state = ours.encoder.new_merge_state()
            mine = ours.frame_features(video, state).reshape(B * T, -1)
        other = find_mergeable(ref)[0].last_merge_state
        assert state.tokens_per_layer == other.tokens_per_layer == counts_ours[0]
        assert not torch.allclose(theirs, plain, atol=1e-3)  # the merge changed the embeddings
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
        torch.testing.assert_close(state.size, other.size, atol=1e-5, rtol=1e-5)
        assert state.source.shape == other.source.shape == (B * T, 197 - 144, 197)
        torch.testing.assert_close(state.source, other.source, atol=1e-5, rtol=1e-5)
    finally:
        unpatch(ref)
        unpatch(ours)
