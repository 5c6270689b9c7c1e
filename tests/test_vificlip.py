"""ViFi-CLIP: our towers equal open_clip's and HF's CLIP on the same random weights; every checkpoint layout loads
strictly to identical outputs; CLS tokens are never merged; the tokenizer matches open_clip."""
from __future__ import annotations

import pytest
import torch

from vidtldr_pl.backbones import create_model, list_models
from vidtldr_pl.backbones.vificlip import load_vificlip_checkpoint, to_vificlip_layout
from vidtldr_pl.errors import CheckpointError
from vidtldr_pl.merging import MergeSetting, apply_merge, unpatch

# a small CLIP with every ViT-B/16 wiring (CLS, learned positions, ln_pre, QuickGELU, causal text, projections)
SMALL = dict(vision_width=64, vision_layers=2, vision_heads=4, patch=8, image=32, embed=32, text_width=32,
             text_layers=2, text_heads=4, context=16, vocab=300)


def _build(**kw):
    s = SMALL
    return create_model("vificlip_b16",
        depth=s["vision_layers"], num_heads=s["vision_heads"], patch_size=s["patch"], img_size=s["image"],
        num_frames=3, vocab_size=s["vocab"], context_length=s["context"], text_width=s["text_width"],
        text_layers=s["text_layers"], text_heads=s["text_heads"], vision_width=s["vision_width"], embed_dim=s["embed"],
        **kw).eval()


def _open_clip_model():
    import open_clip
    s = SMALL
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=s["embed"], quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=s["vision_layers"], width=s["vision_width"],
                                                  head_width=s["vision_width"] // s["vision_heads"],
                                                  patch_size=s["patch"], image_size=s["image"]),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=s["context"], vocab_size=s["vocab"], width=s["text_width"],
                                              heads=s["text_heads"], layers=s["text_layers"]),
    ).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("logit_scale"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(n: int = 5, length: int = 16, vocab: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab - 1, (n, length), generator=g)
    for i in range(n):  # EOT (the largest id) at varied positions, zero padding after it
        end = 3 + 2 * i
        ids[i, end] = vocab - 1
        ids[i, end + 1:] = 0
    return ids


def test_towers_equal_open_clip(tmp_path):
    ref = _open_clip_model()
    ours = _build()
    report = load_vificlip_checkpoint(ours, _save(ref.state_dict(), tmp_path))
    assert report.ok
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        frames = video.transpose(1, 2).reshape(6, 3, 32, 32)
        ref_frames = ref.encode_image(frames).reshape(2, 3, -1)
        ref_video = torch.nn.functional.normalize(ref_frames.mean(1), dim=-1)
        torch.testing.assert_close(ours.frame_features(video), ref_frames, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_video(video), ref_video, atol=1e-4, rtol=0)
        ids = _ids()
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids, normalize=True), atol=1e-4, rtol=0)
        assert torch.equal(ours.logit_scale, ref.logit_scale)


def _hf_pair():
    import transformers
    s = SMALL
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=s["vocab"], hidden_size=s["text_width"], intermediate_size=4 * s["text_width"],
                         num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
                         max_position_embeddings=s["context"], hidden_act="quick_gelu", eos_token_id=s["vocab"] - 1,
                         layer_norm_eps=1e-5),
        vision_config=dict(hidden_size=s["vision_width"], intermediate_size=4 * s["vision_width"],
                           num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                           image_size=s["image"], patch_size=s["patch"], hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=s["embed"])
    torch.manual_seed(0)
    ref = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref


def _save(state, tmp_path) -> str:
    from safetensors.torch import save_file

    path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.safetensors"
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    return str(path)


def test_towers_equal_hf_clip(tmp_path):
    ref = _hf_pair()
    ours = _build()
    load_vificlip_checkpoint(ours, _save(ref.state_dict(), tmp_path))
    video = torch.randn(2, 3, 3, 32, 32)
    ids = _ids()
    with torch.no_grad():
        frames = video.transpose(1, 2).reshape(6, 3, 32, 32)
        ref_img = ref.get_image_features(pixel_values=frames)
        ref_img = getattr(ref_img, "pooler_output", ref_img)
        torch.testing.assert_close(ours.frame_features(video), ref_img.reshape(2, 3, -1), atol=1e-4, rtol=0)
        mask = (torch.arange(16) <= ids.argmax(-1, keepdim=True)).long()
        ref_txt = ref.get_text_features(input_ids=ids, attention_mask=mask)
        ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
        expected = torch.nn.functional.normalize(ref_txt, dim=-1)
        torch.testing.assert_close(ours.encode_text(ids), expected, atol=1e-4, rtol=0)


def test_every_layout_loads_to_identical_outputs(tmp_path):
    ref = _open_clip_model()
    openai = {k: v for k, v in ref.state_dict().items() if k != "attn_mask"}
    vifi = {"module." + ("image_encoder." + k[7:] if k.startswith("visual.") else
                         k if k == "logit_scale" else "text_encoder." + k): v
            for k, v in openai.items() if k != "token_embedding.weight"}
    vifi["module.prompt_learner.complete_text_embeddings"] = torch.randn(4, 16, 32)
    video = torch.randn(1, 3, 3, 32, 32)
    ids = _ids(2)
    ours = _build()
    load_vificlip_checkpoint(ours, _save(openai, tmp_path))
    with torch.no_grad():
        expected = (ours.encode_video(video), ours.encode_text(ids))
    own = _save(ours.state_dict(), tmp_path)
    vifi_path = _save(vifi, tmp_path)
    # a ViFi-CLIP file alone lacks the token embedding: the strict load names it
    with pytest.raises(CheckpointError, match="text.token_embedding.weight"):
        load_vificlip_checkpoint(_build(), vifi_path)
    for path, extra in ((own, {}), (vifi_path, {"clip_checkpoint": _save(openai, tmp_path)})):
        model = _build()
        report = load_vificlip_checkpoint(model, path, **extra)
        assert report.ok
        with torch.no_grad():
            torch.testing.assert_close(model.encode_video(video), expected[0], atol=0, rtol=0)
            torch.testing.assert_close(model.encode_text(ids), expected[1], atol=0, rtol=0)
    # a wrong shape is refused by name
    bad = dict(openai)
    bad["visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="proj"):
        load_vificlip_checkpoint(_build(), _save(bad, tmp_path))


def test_pickled_vificlip_file_refused_with_convert_path(tmp_path):
    import argparse  # a Namespace stands in for the yacs CfgNode ViFi-CLIP pickles

    path = tmp_path / "vifi.pth"
    torch.save({"model": {"module.logit_scale": torch.tensor(1.0)}, "config": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="convert --trust"):
        load_vificlip_checkpoint(_build(), path)


def test_registered_and_cls_never_merged():
    assert {"vificlip_b16", "vificlip_tiny"} <= set(list_models(task="classification"))
    model = create_model("vificlip_tiny").eval()
    enc = model.encoder
    assert enc.num_prefix_tokens == 1 and enc.num_tokens == 17
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        plain = model.frame_features(video)
    for method in ("vidtldr", "tome", "random"):
        for cls_in in (True, False):
            options = {"prefix_in_saliency": cls_in} if method == "vidtldr" else {}
            apply_merge(model, MergeSetting(method=method, r=[4, 4, 4], trace_source=True, method_options=options))
            state = enc.new_merge_state()
            with torch.no_grad():
                tokens = enc(video, state)
            # per frame: the B x T = 8 frames are the batch, 17 -> 13 -> 9 -> 5 tokens each
            assert tokens.shape[0] == 8 and state.tokens_per_layer == [13, 9, 5]
            # row 0 of every frame is the CLS and holds only itself
            assert torch.all(state.source[:, 0, 0] == 1) and torch.all(state.source[:, 0].sum(-1) == 1), method
            unpatch(model)
    with torch.no_grad():
        torch.testing.assert_close(model.frame_features(video), plain, atol=0, rtol=0)


def test_tokenizer_matches_open_clip():
    import open_clip
    from vidtldr_pl.text.clip_tokenizer import clip_tokenize

    g = torch.Generator().manual_seed(0)
    words = ["a", "man", "is", "playing", "guitar", "on", "the", "street", "Two", "DOGS", "run", "café", "naïve",
             "it's", "won't", "3.14", "#tag", "@user", "e-mail", "  spaced  ", "emoji🙂", "日本語", "ÅNGSTRÖM",
             "supercalifragilistic", "!!!", "(brackets)", "x" * 30, "twenty-one", "50%", "don't"]
    captions = [" ".join(words[i] for i in torch.randint(0, len(words), (int(n),), generator=g).tolist())
                for n in torch.randint(1, 60, (10_000,), generator=g)]
    ours = clip_tokenize(captions, 77)
    ref = open_clip.tokenize(captions, 77)
    assert ours.shape == (10_000, 77) and torch.equal(ours, ref)
    assert (ours.argmax(-1) == (ours > 0).sum(-1) - 1).all()  # EOT (largest id) ends every row, truncated ones too


def test_prefix_in_saliency_option():
    """prefix_in_saliency=False: the CLS gets 0 and the patches' saliency is that of the patch-only attention, the
    same from explicit probs and from q / k; True keeps the official all-token computation."""
    from vidtldr_pl.merging import AttentionInfo
    from vidtldr_pl.merging.methods import VidTLDR
    from vidtldr_pl.merging.saliency import vidtldr_saliency

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 9, 4, generator=g), torch.randn(2, 3, 9, 4, generator=g)
    probs = (q @ k.transpose(-1, -2)).softmax(-1)
    off = VidTLDR(protected=1, prefix_in_saliency=False)
    s_probs = off.token_saliency(AttentionInfo(probs=probs), None)
    s_qk = off.token_saliency(AttentionInfo(q=q, k=k), None)
    torch.testing.assert_close(s_probs, s_qk, atol=1e-5, rtol=0)
    assert torch.all(s_probs[:, 0] == 0)
    patch_only = (q[:, :, 1:] @ k[:, :, 1:].transpose(-1, -2)).softmax(-1)
    torch.testing.assert_close(s_probs[:, 1:], vidtldr_saliency(patch_only), atol=1e-5, rtol=0)
    on = VidTLDR(protected=1).token_saliency(AttentionInfo(probs=probs), None)
    torch.testing.assert_close(on, vidtldr_saliency(probs))
    assert not torch.allclose(on[:, 1:], s_probs[:, 1:])


def test_retrieval_task_by_name_ranks_by_itc():
    """RetrievalTask("vificlip_tiny") evaluates the dual encoder by ITC alone, equal to a brute-force cosine loop."""
    import numpy as np
    from retrieval_bruteforce import TinyRetrievalData, bruteforce_metrics, make_trainer

    from vidtldr_pl.tasks import RetrievalTask

    torch.manual_seed(0)
    task = RetrievalTask("vificlip_tiny", model_overrides={"img_size": 64, "num_frames": 4, "context_length": 12})
    dm = TinyRetrievalData(num_videos=6, batch_size=4)
    make_trainer().validate(task, datamodule=dm, verbose=False)
    model = task.model.eval()
    with torch.no_grad():
        v = torch.cat([model.encode_video(x[None].permute(0, 2, 1, 3, 4)) for x in dm.videos])
        t = torch.cat([model.encode_text(ids[None]) for ids in dm.input_ids])
    sim = (v @ t.t()).numpy()
    np.testing.assert_allclose(task.scores["itc_v2t"].numpy(), sim, rtol=0, atol=1e-5)
    expected = {f"itc/{k}": val for k, val in bruteforce_metrics(sim, sim.T, dm.txt2vid, dm.vid2txt).items()}
    assert {k: task.results[k] for k in expected} == expected
    assert not any(k.startswith("itm/") for k in task.results)


def test_clip_tokenizer_for_retrieval_datamodules():
    from vidtldr_pl.text.clip_tokenizer import CLIPTokenizer, clip_tokenize

    out = CLIPTokenizer()(["a man is singing", "two dogs"], max_length=8)
    assert torch.equal(out["input_ids"], clip_tokenize(["a man is singing", "two dogs"], 8))
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]


@pytest.mark.slow
def test_b16_image_and_text_towers_equal_open_clip_vit_b16(tmp_path):
    """Full size: open_clip's ViT-B-16-quickgelu (OpenAI's CLIP architecture) with random fp32 weights, loaded into
    vificlip_b16 from its state dict: per-frame embeddings (197 tokens per frame) and text features within 1e-4."""
    import open_clip

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, precision="fp32").eval()
    ours = create_model("vificlip_b16", num_frames=2).eval()
    report = load_vificlip_checkpoint(ours, _save(ref.state_dict(), tmp_path))
    assert report.ok and ours.encoder.num_tokens == 197
    video = torch.randn(1, 3, 2, 224, 224)
    ids = open_clip.tokenize(["a photo of a dog.", "a man is playing the guitar on a street corner"])
    with torch.no_grad():
        ref_frames = ref.encode_image(video.transpose(1, 2).reshape(2, 3, 224, 224))
        torch.testing.assert_close(ours.frame_features(video)[0], ref_frames, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids, normalize=True), atol=1e-4, rtol=0)
