"""Two implementations agree (issue 24): on the same random weights, transformers' VideoMAEForVideoClassification
merged in place with vid-TLDR and our ``videomae_b16`` (a small input and depth, ``size_weighted_pool=True``: the
HF adapter pools size-weighted, see ``vidtldr_pl/foreign/hf_videomae.py``) with vid-TLDR give the same logits
within 1e-4 and the same merge assignment (token counts per block, sizes, the input patches every token holds),
in explicit (eager) and in fused (sdpa) attention, for both saliencies."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable

transformers = pytest.importorskip("transformers")  # in the test extra; the library itself never imports it

# a ViT-B/16-shaped VideoMAE (patch 16, tubelet 2, q / v biases, ours' eps) at a small input and depth: 4 x 4 x 4
DIMS = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=3)
OVERRIDES = {"img_size": 64, "num_frames": 8, "depth": 3, "num_classes": 7, "size_weighted_pool": True}
R = [16, 8, 8]  # 64 tokens -> 48 -> 40 -> 32
MODES = {"explicit": "eager", "fused": "sdpa"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[dict[str, torch.Tensor], str]:
    """Random HF weights (every one non-zero, q / v biases included) and the file our converter loads."""
    cfg = transformers.VideoMAEConfig(image_size=64, patch_size=16, num_frames=8, tubelet_size=2, num_labels=7,
                                      use_mean_pooling=True, layer_norm_eps=1e-6, **DIMS)
    torch.manual_seed(0)
    model = transformers.VideoMAEForVideoClassification(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = ("layernorm" in name or "fc_norm" in name) and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.02 if p.ndim > 1 else 0.1) + (1.0 if is_norm_weight else 0.0))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("videomae") / "hf.safetensors"
    save_file(state, path)
    return state, str(path)


def _hf(state: dict[str, torch.Tensor], attn: str) -> torch.nn.Module:
    cfg = transformers.VideoMAEConfig(image_size=64, patch_size=16, num_frames=8, tubelet_size=2, num_labels=7,
                                      use_mean_pooling=True, layer_norm_eps=1e-6, attn_implementation=attn, **DIMS)
    model = transformers.VideoMAEForVideoClassification(cfg).eval()
    model.load_state_dict(state)
    return model


def _video() -> torch.Tensor:
    return torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))  # (B, 3, T, H, W), normalised


@pytest.mark.parametrize("method", ["vidtldr", "vidtldr_repshift"])
@pytest.mark.parametrize("mode", MODES)
def test_transformers_videomae_merged_in_place_agrees_with_ours(weights, mode, method):
    state, path = weights
    hf = _hf(state, MODES[mode])
    ours = create_model("videomae_b16", checkpoint=path, attention=mode, **OVERRIDES).eval()
    setting = MergeSetting(method=method, r=R, trace_source=True)
    counts_hf, counts_ours = apply_merge(hf, setting), apply_merge(ours, setting)
    assert find_mergeable(hf)[0].blocks[0].merge_attention == mode
    video = _video()
    with torch.no_grad():
        logits_hf = hf(pixel_values=video.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)
        ours_state = ours.encoder.new_merge_state()
        logits_ours = ours.head(ours.forward_features(video, ours_state))
    hf_state = find_mergeable(hf)[0].last_merge_state
    assert counts_hf == counts_ours == [[48, 40, 32]]
    assert hf_state.tokens_per_layer == ours_state.tokens_per_layer == [48, 40, 32]
    assert torch.equal(hf_state.source, ours_state.source)  # the same patches in the same merged tokens
    assert torch.allclose(hf_state.size, ours_state.size, atol=1e-5)
    assert (logits_hf - logits_ours).abs().max().item() < 1e-4
    with torch.no_grad():  # and the merge mattered: the unmerged logits differ beyond the tolerance
        apply_merge(hf, MergeSetting(method="none"))
        assert (hf(pixel_values=video.permute(0, 2, 1, 3, 4)).logits - logits_hf).abs().max().item() > 1e-3
