"""Reductions before the first block (merging.input_reduction): RLT against a hand-worked video and against the
authors' code (rccchoudhury/rlt, re-implemented literally below), padded batches equal to each video alone, frame /
resolution downsampling equal to the model built for the smaller input, FLOPs, and the refusal on foreign models."""
from __future__ import annotations

import copy
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F

from vidtldr_pl.backbones import create_model
from vidtldr_pl.backbones.framewise import FrameViTEncoder
from vidtldr_pl.backbones.layers import ViTConfig, ViTEncoder, init_vit_weights
from vidtldr_pl.flops import encoder_flops, video_flops
from vidtldr_pl.merging import METHODS, MergeSetting, MergeState, apply_merge, build_method, find_mergeable, unpatch
from vidtldr_pl.merging.input_reduction import INPUT, RLT, is_input_method, rlt_keep_mask, run_lengths

INPUT_METHODS = ("frame_stride", "resize", "rlt")


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vit(**kw) -> ViTEncoder:
    cfg = dict(embed_dim=16, depth=2, num_heads=2, patch_size=2, img_size=4, num_frames=4, tubelet_size=1)
    cfg.update(kw)
    torch.manual_seed(0)
    enc = ViTEncoder(ViTConfig(**cfg))
    enc.apply(init_vit_weights)
    if enc.cfg.class_token:
        torch.nn.init.normal_(enc.cls_token, std=0.5)
    if enc.cfg.pos_embed == "learned":
        torch.nn.init.normal_(enc.pos_embed, std=0.5)
    return enc.eval()


def _run(enc, video, **state_kw):
    state = enc.new_merge_state()
    for k, v in state_kw.items():
        setattr(state, k, v)
    with torch.no_grad():
        return enc(video, state), state


# ------------------------------------------------------------------------------------- the authors' code, literally
def their_find_idxs_to_keep(x: torch.Tensor, threshold: int = 2, tubelet_size: int = 2, patch_size: int = 16) -> torch.Tensor:
    """rccchoudhury/rlt src/models/static_token_utils.py batched_find_idxs_to_keep (ipdb lines removed)."""
    assert len(x.shape) == 5, "Input must be a 5D tensor"
    x = x.type(torch.float32)
    diffs = x[:, :, (2 * tubelet_size - 1)::tubelet_size] - x[:, :, :-tubelet_size:tubelet_size]
    diffs = torch.abs(diffs)
    avg_pool_blocks = F.avg_pool3d(diffs, (1, patch_size, patch_size))
    avg_pool_blocks = torch.mean(avg_pool_blocks, dim=1, keepdim=True)
    first_frame = torch.ones_like(avg_pool_blocks[:, :, 0:1]) * 255
    avg_pool_blocks = torch.cat([first_frame, avg_pool_blocks], dim=2)
    keep_idxs = avg_pool_blocks.squeeze(1) > threshold
    keep_idxs = keep_idxs.flatten(1)
    return keep_idxs


def their_get_token_lengths(token_mask: torch.Tensor, batch_size: int, input_shape: Tuple) -> torch.Tensor:
    """rccchoudhury/rlt batched_get_token_lengths: run lengths of the kept tokens, in (b, h, w, t) order."""
    input_tensor = token_mask.reshape((batch_size,) + input_shape)
    input_tensor = input_tensor.permute(0, 2, 3, 1)
    B, H, W, T = input_tensor.shape
    concat_tensor = torch.cat([input_tensor,
                               torch.ones((B, H, W, 1), dtype=torch.uint8, device=input_tensor.device)], dim=-1)
    range_tensor = torch.arange(T + 1, device=input_tensor.device).reshape((1, 1, 1, T + 1))
    range_tensor = range_tensor.repeat(B, H, W, 1)
    diffs = range_tensor[concat_tensor.bool()].diff()
    diffs = diffs[diffs > 0]
    return diffs


# ------------------------------------------------------------------------------------------------ hand-worked RLT
# 4 frames of 2 x 2 patches (patch 2 px, 4 px frames), every patch one uniform value; threshold 0.25.
#   patch 0: static                   -> kept at t0, run 4
#   patch 1: changes by 1 every frame -> kept at t0..t3, runs 1
#   patch 2: 0, 0, 1, 1               -> kept at t0 (run 2) and t2 (run 2)
#   patch 3: 0, .125, .25, .5         -> steps .125, .125, .25 never exceed 0.25 (strict): kept at t0, run 4
VALUES = [[0, 0, 0, 0], [0, 1, 0, 0.125], [0, 2, 1, 0.25], [0, 3, 1, 0.5]]  # [t][patch]
KEPT = [0, 1, 2, 3, 5, 9, 10, 13]  # flat (t, h, w) indices of the kept tubelets
LENGTHS = [4, 1, 2, 4, 1, 1, 2, 1]


def _hand_video() -> torch.Tensor:
    video = torch.zeros(1, 3, 4, 4, 4)
    for t, row in enumerate(VALUES):
        for p, v in enumerate(row):
            h, w = divmod(p, 2)
            video[0, :, t, 2 * h:2 * h + 2, 2 * w:2 * w + 2] = v
    return video


def test_rlt_hand_worked_keep_and_run_lengths():
    video = _hand_video()
    keep = rlt_keep_mask(video, 0.25, tubelet=1, patch=2)
    assert keep.flatten().nonzero().flatten().tolist() == KEPT
    lengths = run_lengths(keep).flatten()
    assert lengths[KEPT].tolist() == LENGTHS and lengths.sum() == 16
    enc = _vit()
    apply_merge(enc, MergeSetting(method="rlt", method_options={"threshold": 0.25}, trace_source=True))
    out, state = _run(enc, video)
    assert state.tokens_per_layer == [8, 8] and state.count is None and state.grid is None
    assert state.size[0, :, 0].tolist() == LENGTHS
    # each kept token holds its run: token (t0, patch 2) holds input tokens 2 and 6; (t2, patch 2) 10 and 14
    holds = [state.source[0, j].nonzero().flatten().tolist() for j in range(8)]
    assert holds == [[0, 4, 8, 12], [1], [2, 6], [3, 7, 11, 15], [5], [9], [10, 14], [13]]
    # the blocks ran on the kept embedded tokens, their sizes the run lengths (proportional attention)
    unpatch(enc)
    ref_state = MergeState(size=torch.tensor(LENGTHS, dtype=torch.float32)[None, :, None])
    with torch.no_grad():
        ref = enc.run_blocks(enc.embed(video)[:, KEPT], ref_state)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_rlt_literal_option_sizes_one():
    enc = _vit()
    apply_merge(enc, MergeSetting(method="rlt", method_options={"threshold": 0.25, "lengths_as_size": False}))
    out, state = _run(enc, _hand_video())
    assert state.size is None and state.count is None
    unpatch(enc)
    with torch.no_grad():
        ref = enc.run_blocks(enc.embed(_hand_video())[:, KEPT], MergeState())
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("tubelet", [1, 2])
def test_rlt_equals_the_authors_code(tubelet):
    """Random normalised videos with runs of repeated frames and patches (and near-repeats around the threshold):
    the keep mask, the run lengths and the packed tokens + positions equal rccchoudhury/rlt's."""
    g = _g(tubelet)
    b, t, size, patch = 3, 8, 16, 4
    video = torch.randn(b, 3, t, size, size, generator=g)
    for i in range(1, t):  # repeat some patches of the previous frame, with noise around the threshold
        repeat = torch.rand(b, 1, size // patch, size // patch, generator=g) < 0.8
        repeat = repeat.repeat_interleave(patch, -1).repeat_interleave(patch, -2)
        step = torch.rand(b, 1, size // patch, size // patch, generator=g) * 0.2 / (2 * tubelet - 1)
        noise = step.repeat_interleave(patch, -1).repeat_interleave(patch, -2)  # a per-patch offset near 0.1
        video[:, :, i] = torch.where(repeat, video[:, :, i - 1] + noise, video[:, :, i])
    theirs = their_find_idxs_to_keep(video, threshold=0.1, tubelet_size=tubelet, patch_size=patch)
    ours = rlt_keep_mask(video, 0.1, tubelet, patch)
    assert torch.equal(ours.flatten(1), theirs) and 0 < theirs.sum() < theirs.numel()
    shape = (t // tubelet, size // patch, size // patch)
    their_lengths = their_get_token_lengths(theirs.to(torch.uint8), b, shape)
    ours_hwt = run_lengths(ours).reshape(b, *shape).permute(0, 2, 3, 1)  # their order: (b, h, w, t)
    assert torch.equal(ours_hwt[ours.reshape(b, *shape).permute(0, 2, 3, 1)], their_lengths)
    # the encoder's tokens: their collate (crops[i][mask[i]] + pos_embed[mask[i]]) on our patch embedding
    enc = _vit(embed_dim=24, num_heads=2, patch_size=patch, img_size=size, num_frames=t, tubelet_size=tubelet)
    apply_merge(enc, MergeSetting(method="rlt"))
    state = enc.new_merge_state()
    with torch.no_grad():
        x = enc.embed_input(video, state)
        full = enc.patch_embed(video) + enc.position_embedding(shape[0], video.device)
    for i in range(b):
        n = int(theirs[i].sum())
        torch.testing.assert_close(x[i, :n], full[i][theirs[i]], rtol=0, atol=0)
        assert torch.all(x[i, n:] == 0) and torch.all(state.size[i, n:] == 0)
        assert state.count[i] == n
        their_sorted = ours_hwt[i][ours.reshape(b, *shape)[i].permute(1, 2, 0)]
        assert sorted(state.size[i, :n, 0].long().tolist()) == sorted(their_sorted.tolist())


# ------------------------------------------------------------------------------------------- padded = alone
def _repeated(video: torch.Tensor, frames: slice) -> torch.Tensor:
    video = video.clone()
    video[:, :, frames] = video[:, :, frames.start - 1: frames.start]
    return video


@pytest.mark.parametrize("attention", ["fused", "explicit"])
@pytest.mark.parametrize("lengths_as_size", [True, False])
@pytest.mark.parametrize("kind", ["joint", "joint_cls", "framewise"])
def test_padded_batch_equals_each_video_alone(attention, lengths_as_size, kind):
    if kind == "framewise":
        torch.manual_seed(0)
        enc = FrameViTEncoder(ViTConfig(embed_dim=16, depth=2, num_heads=2, patch_size=2, img_size=4, num_frames=1,
                                        class_token=True, pos_embed="learned", qkv_bias="qkv"), video_frames=4)
        enc.apply(init_vit_weights)
        torch.nn.init.normal_(enc.cls_token, std=0.5)
        enc.eval()
    else:
        enc = _vit(class_token=kind == "joint_cls")
    enc.set_attention(attention)
    g = _g(7)
    a = _repeated(torch.randn(1, 3, 4, 4, 4, generator=g), slice(1, 3))  # frames 1, 2 repeat frame 0
    b = torch.randn(1, 3, 4, 4, 4, generator=g)
    b[:, :, 3, :2, :2] = b[:, :, 2, :2, :2]  # one repeated patch
    apply_merge(enc, MergeSetting(method="rlt", method_options={"lengths_as_size": lengths_as_size}))
    out, state = _run(enc, torch.cat([a, b]))
    assert state.count is not None and state.count.unique().numel() > 1
    rows = 4 if kind == "framewise" else 1
    for i, alone_video in enumerate((a, b)):
        alone, alone_state = _run(enc, alone_video)
        for r in range(rows):
            row = i * rows + r
            n = int(state.count[row])
            k = alone_state.count[r] if alone_state.count is not None else alone.shape[1]
            assert n == int(k)
            torch.testing.assert_close(out[row, :n], alone[r, :n], rtol=1e-5, atol=1e-5)
            assert torch.isfinite(out[row]).all()
    unpatch(enc)


def test_rlt_nothing_repeated_is_the_unreduced_model():
    enc = _vit(class_token=True)
    video = torch.randn(2, 3, 4, 4, 4, generator=_g(3))
    plain, _ = _run(enc, video)
    for sizes in (True, False):
        apply_merge(enc, MergeSetting(method="rlt", method_options={"lengths_as_size": sizes}))
        out, state = _run(enc, video)
        assert state.count is None and state.grid is not None and state.tokens_per_layer == [17, 17]
        torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-6)
    unpatch(enc)


# -------------------------------------------------------------------------------- frame / resolution baselines
@pytest.mark.parametrize("preset", ["umt_b16", "videomae_b16"])
def test_frame_stride_equals_the_model_on_fewer_frames(preset):
    """The strided video through the model configured for that many frames (sin-cos table for T', UMT's checkpoint
    table interpolated in time as UMT does)."""
    model = create_model(preset, img_size=32, depth=2, num_frames=8, ckpt_num_frames=8).eval()
    enc = find_mergeable(model)[0]
    video = torch.randn(2, 3, 8, 32, 32, generator=_g(1))
    apply_merge(model, MergeSetting(method="frame_stride", method_options={"stride": 2}))
    out, state = _run(enc, video)
    short = create_model(preset, img_size=32, depth=2, num_frames=4, ckpt_num_frames=8).eval()
    short.load_state_dict(model.state_dict())
    ref, ref_state = _run(find_mergeable(short)[0], video[:, :, ::2])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert state.tokens_per_layer == ref_state.tokens_per_layer and state.grid == ref_state.grid
    assert apply_merge(model, MergeSetting(method="frame_stride", method_options={"stride": 2}))[0] == \
        ref_state.tokens_per_layer
    if enc.cfg.tubelet_size == 2:  # 3 frames are not whole tubelets: refused when applied and at the forward
        with pytest.raises(ValueError, match="stride=3 keeps 3 of 8 frames, not a multiple of the tubelet size 2"):
            apply_merge(model, MergeSetting(method="frame_stride", method_options={"stride": 3}))
        enc.merge_settings.method.stride = 3
        with pytest.raises(ValueError, match="stride=3 keeps 3 of 8 frames"):
            _run(enc, video)


def test_resize_sincos_equals_the_model_built_for_the_smaller_input():
    import torchvision.transforms.v2.functional as TF

    model = create_model("umt_b16", img_size=64, depth=2, num_frames=2).eval()
    enc = find_mergeable(model)[0]
    video = torch.randn(2, 3, 2, 64, 64, generator=_g(2))
    apply_merge(model, MergeSetting(method="resize", method_options={"size": 32}))
    out, state = _run(enc, video)
    small = create_model("umt_b16", img_size=32, depth=2, num_frames=2).eval()
    small.load_state_dict(model.state_dict())
    frames = TF.resize(video.transpose(1, 2).flatten(0, 1), [32, 32], antialias=True).unflatten(0, (2, 2))
    ref, ref_state = _run(find_mergeable(small)[0], frames.transpose(1, 2))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert state.tokens_per_layer == ref_state.tokens_per_layer == [8, 8] and state.grid.per_frame == 4


def test_resize_learned_positions_follow_timm_resampling():
    """ViFi-CLIP's learned positions, bicubic-resampled by timm's resample_abs_pos_embed (open_clip's recipe)."""
    import torchvision.transforms.v2.functional as TF
    from timm.layers import resample_abs_pos_embed

    model = create_model("vificlip_b16", img_size=64, depth=2, num_frames=2).eval()
    enc = find_mergeable(model)[0]
    torch.nn.init.normal_(enc.pos_embed, std=0.5)
    video = torch.randn(2, 3, 2, 64, 64, generator=_g(4))
    apply_merge(model, MergeSetting(method="resize", method_options={"scale": 0.5}))
    out, state = _run(enc, video)
    small = create_model("vificlip_b16", img_size=32, depth=2, num_frames=2).eval()
    weights = dict(model.state_dict())
    key = next(k for k in weights if k.endswith("encoder.pos_embed"))
    weights[key] = resample_abs_pos_embed(weights[key], [2, 2], [4, 4], num_prefix_tokens=1, antialias=True)
    small.load_state_dict(weights)
    frames = TF.resize(video.transpose(1, 2).flatten(0, 1), [32, 32], antialias=True).unflatten(0, (2, 2))
    ref, _ = _run(find_mergeable(small)[0], frames.transpose(1, 2))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert state.tokens_per_layer == [5, 5] and out.shape[0] == 4


@pytest.mark.parametrize("method", ["frame_stride", "resize"])
def test_learned_joint_positions_resampled_as_umt(method):
    """Learned space-time positions (a CLS variant of VideoMAE): linear in time and bicubic in space, as UMT's
    interpolate_pos_embed does, computed here from the table by hand; equal to the model built for that input."""
    model = create_model("videomae_tiny", img_size=64, depth=2, num_frames=8, class_token=True,
                         pos_embed="learned").eval()
    enc = find_mergeable(model)[0]
    torch.nn.init.normal_(enc.pos_embed, std=0.5)
    video = torch.randn(2, 3, 8, 64, 64, generator=_g(6))
    options = {"stride": 2} if method == "frame_stride" else {"size": 32}
    apply_merge(model, MergeSetting(method=method, method_options=options))
    out, _ = _run(enc, video)
    frames, side = (2, 4) if method == "frame_stride" else (4, 2)
    table = enc.pos_embed.detach()
    cls, grid = table[:, :1], table[0, 1:].reshape(4, 4, 4, -1)  # (T', h, w, D)
    grid = F.interpolate(grid.permute(1, 2, 3, 0).flatten(0, 1), size=frames, mode="linear")  # time, per patch
    grid = grid.unflatten(0, (4, 4)).permute(3, 2, 0, 1)  # (T, D, h, w)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
    weights = dict(model.state_dict())
    weights["encoder.pos_embed"] = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)
    small = create_model("videomae_tiny", img_size=16 * side, depth=2, num_frames=2 * frames, class_token=True,
                         pos_embed="learned").eval()
    small.load_state_dict(weights)
    shown = video[:, :, ::2] if method == "frame_stride" else None
    if shown is None:
        import torchvision.transforms.v2.functional as TF
        shown = TF.resize(video.transpose(1, 2).flatten(0, 1), [32, 32], antialias=True).unflatten(0, (2, 8))
        shown = shown.transpose(1, 2)
    ref, _ = _run(find_mergeable(small)[0], shown)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bad_options_one_line():
    for make, needle in [(lambda: build_method("frame_stride", stride=0), "frame_stride stride must be"),
                         (lambda: build_method("resize", scale=1.5), "resize scale must be in"),
                         (lambda: build_method("rlt", threshold=-1), "rlt threshold must be"),
                         (lambda: build_method("rlt", lengths_as_size="yes"), "lengths_as_size")]:
        with pytest.raises(ValueError, match=needle):
            make()
    enc = _vit(img_size=8)
    with pytest.raises(ValueError, match="resize size=5 is not a multiple of the patch size 2"):
        apply_merge(enc, MergeSetting(method="resize", method_options={"size": 5}))


# ---------------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("preset", ["umt_b16", "videomae_b16", "vificlip_b16"])
def test_flops_lower_for_each(preset):
    model = create_model(preset, img_size=32, depth=2, num_frames=4).eval()
    enc = find_mergeable(model)[0]
    plain = encoder_flops(enc).flops
    video = torch.randn_like(enc.example_input(2))
    video[0, :, 1:] = video[0, :, :1]  # video 0 is a still: RLT keeps its first frame only
    for method in INPUT_METHODS:
        apply_merge(model, MergeSetting(method=method))
        reports = video_flops(enc, video)
        if method != "rlt":
            assert encoder_flops(enc).flops < plain and all(r.flops == encoder_flops(enc).flops for r in reports)
        elif preset == "vificlip_b16":  # frame rows padded to frame 0's width: no saving without packing
            assert reports[0].flops == reports[1].flops == plain
        else:
            assert reports[0].flops < reports[1].flops == plain
            with pytest.raises(ValueError, match="rlt keeps tokens by their pixels"):
                encoder_flops(enc)
    unpatch(model)


# ---------------------------------------------------------------------------------------- table and foreign models
def test_registered_as_input_methods():
    assert [m for m in METHODS if METHODS[m].position == INPUT] == list(INPUT_METHODS)
    for name in INPUT_METHODS:
        method = build_method(name)
        assert is_input_method(method) and not method.needs_attention and not method.needs_shift
    assert isinstance(build_method("RLT"), RLT)


def test_r_is_unused_and_off_restores():
    enc = _vit(class_token=True)
    video = torch.randn(2, 3, 4, 4, 4, generator=_g(5))
    plain, _ = _run(enc, video)
    for r in (None, 0, [2, 1]):
        counts = apply_merge(enc, MergeSetting(method="frame_stride", r=r))
        assert enc.merge_settings.schedule == (0, 0) and counts == [[9, 9]]
        assert all(block.merge is None for block in enc.blocks)
        assert _run(enc, video)[0].shape == (2, 9, 16)
    apply_merge(enc, MergeSetting(method="none"))
    assert torch.equal(_run(enc, video)[0], plain)
    apply_merge(enc, MergeSetting(method="resize"))
    unpatch(enc)
    assert torch.equal(_run(enc, video)[0], plain)


def test_foreign_models_refuse_input_methods():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=2)
    before = {id(m): type(m) for m in model.modules()}
    for name in INPUT_METHODS:
        with pytest.raises(ValueError, match=f"method '{name}' reduces the input before the first block"):
            apply_merge(model, MergeSetting(method=name))
    assert {id(m): type(m) for m in model.modules()} == before  # nothing grafted
    apply_merge(model, MergeSetting(method="tome", r=2))  # grafted now: refused again, by its encoder's name
    with pytest.raises(ValueError, match="reduces the input before the first block"):
        apply_merge(model, MergeSetting(method="rlt"))


@pytest.mark.parametrize("preset", ["umt_b16", "videomae_b16", "vificlip_b16"])
def test_model_outputs_of_a_padded_batch_equal_each_video_alone(preset):
    """Through the models' pooling (``MergeState.mean_pool``: padding left out; VideoMAE size-weighted by the run
    lengths) and ViFi-CLIP's per-frame CLS: the batch's pooled features equal each video's alone."""
    overrides = {"size_weighted_pool": True} if preset == "videomae_b16" else {}
    model = create_model(preset, img_size=32, depth=2, num_frames=4, **overrides).eval()
    enc = find_mergeable(model)[0]
    video = torch.randn_like(enc.example_input(2))
    video[0, :, 1:] = video[0, :, :1]  # a still: its first frame only is kept
    apply_merge(model, MergeSetting(method="rlt"))

    def pooled(v):
        with torch.no_grad():
            if preset == "umt_b16":  # UMT's pooling; its ITM / QA fusion layers refuse padding (below)
                state = enc.new_merge_state()
                return model.vision_encoder.pool_norm(state.mean_pool(enc(v, state)))
            if preset == "videomae_b16":
                return model.forward_features(v)
            return model.encode_video(v)

    batch = pooled(video)
    for i in range(2):
        torch.testing.assert_close(batch[i:i + 1], pooled(video[i:i + 1]), rtol=1e-5, atol=1e-5)
    if preset == "umt_b16":  # the fusion layers would read the padding unmasked: one line, not a wrong score
        with pytest.raises(ValueError, match="no mask for padding"):
            model.encode_vision(video.permute(0, 2, 1, 3, 4))
        model.encode_vision(video[:1].permute(0, 2, 1, 3, 4))  # alone: no padding, no refusal
    unpatch(model)


def test_rlt_packed_equals_padded():
    """The same RLT batch under MergeState batching "pack" (block-diagonal attention) gives the padded tokens."""
    enc = _vit(class_token=True)
    video = torch.randn(2, 3, 4, 4, 4, generator=_g(8))
    video[0, :, 1:] = video[0, :, :1]
    apply_merge(enc, MergeSetting(method="rlt"))
    padded, state = _run(enc, video)
    packed, packed_state = _run(enc, video, batching="pack")
    mask = state.real_mask(padded.shape[1])
    assert state.count.tolist() == [5, 17] and packed.shape == padded.shape
    torch.testing.assert_close(packed[mask], padded[mask], rtol=1e-5, atol=1e-5)
    unpatch(enc)


def test_encoder_stats_count_rlt_per_video():
    """EncoderStats (the numbers compare / sweep rows print): under RLT the GFLOPs are the mean over the evaluated
    videos of each video's own count, as video_flops gives them."""
    from types import SimpleNamespace

    from vidtldr_pl.callbacks.measure import EncoderStats

    model = create_model("videomae_b16", img_size=32, depth=2, num_frames=4).eval()
    enc = find_mergeable(model)[0]
    batches = [torch.randn_like(enc.example_input(2)) for _ in range(2)]
    batches[0][0, :, 1:] = batches[0][0, :, :1]
    batches[1][1, :, 2:] = batches[1][1, :, 1:2]
    apply_merge(model, MergeSetting(method="rlt"))
    stats = EncoderStats()
    stats._start(model)
    for video in batches:
        _run(enc, video)
    stats._finish(SimpleNamespace(sanity_checking=False), model)
    expected = [r.gflops for video in batches for r in video_flops(enc, video)]
    assert stats.results["gflops"] == pytest.approx(sum(expected) / 4, rel=1e-12)
    assert stats.results["gflops_per_video"]["min"] == min(expected) < max(expected)
    assert stats.results["tokens_per_video"] == {"mean": 7.0, "min": 4.0, "max": 8.0}
    unpatch(model)
