"""Video decoding, frame sampling and transforms (vidtldr_pl.data_modules.video / vidtldr_pl.data_modules.transforms).

Synthetic videos are written with PyAV; every frame encodes its own index as 8 black/white stripes in
the top half (robust to compression), the bottom half is noise (realistic file sizes, so that a file cut
in half is cut mid-stream).
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode, RandomResizedCrop

import vidtldr_pl.data_modules.video as video_mod
from vidtldr_pl.data_modules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoTestTransform,
    VideoTrainTransform,
    random_resized_crop_params,
    resize_uint8,
)
from vidtldr_pl.data_modules.video import (
    VideoClip,
    VideoDecodeError,
    VideoDecoder,
    count_frames,
    decode_frames,
    get_frame_indices,
    load_clip_or_skip,
    trim_to_30s,
)

from reference_data import REFERENCE

REF_VIDEOS = REFERENCE / "videos"
# The reference videos are part of the test contract (in the repository): a missing folder fails, it does not skip.
needs_ref_videos = pytest.mark.usefixtures("reference_dir")


# --------------------------------------------------------------------------------------------------
# The official rule, transcribed verbatim from UMT dataset/video_utils.py (global random / np.random)
# --------------------------------------------------------------------------------------------------


def official_get_frame_indices(num_frames, vlen, sample="rand"):
    acc_samples = min(num_frames, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc_samples + 1).astype(int)
    ranges = []
    for idx, interv in enumerate(intervals[:-1]):
        ranges.append((interv, intervals[idx + 1] - 1))
    if sample == "rand":
        try:
            frame_indices = [random.choice(range(x[0], x[1])) for x in ranges]
        except Exception:
            frame_indices = np.random.permutation(vlen)[:acc_samples]
            frame_indices.sort()
            frame_indices = list(frame_indices)
    elif sample == "middle":
        frame_indices = [(x[0] + x[1]) // 2 for x in ranges]
    else:
        raise NotImplementedError
    if len(frame_indices) < num_frames:
        padded_frame_indices = [frame_indices[-1]] * num_frames
        padded_frame_indices[: len(frame_indices)] = frame_indices
        frame_indices = padded_frame_indices
    return [int(i) for i in frame_indices]


def has_empty_range(num_frames, vlen):
    acc = min(num_frames, vlen)
    iv = np.linspace(0, vlen, acc + 1).astype(int)
    return any(iv[i + 1] - 1 <= iv[i] for i in range(acc))


GRID = [(12, v) for v in (1, 2, 5, 11, 12, 13, 17, 20, 23, 24, 25, 30, 68, 100, 120, 250, 270, 444, 1001, 5400)]
GRID += [(8, 7), (8, 8), (8, 9), (8, 15), (8, 16), (8, 300), (4, 3), (4, 90), (1, 1), (1, 50), (16, 31)]


@pytest.mark.parametrize("num_frames,vlen", GRID)
def test_middle_matches_official(num_frames, vlen):
    ours = get_frame_indices(num_frames, vlen, "middle")
    assert ours == official_get_frame_indices(num_frames, vlen, "middle")
    assert len(ours) == num_frames and all(type(i) is int for i in ours)
    assert ours == sorted(ours) and 0 <= ours[0] and ours[-1] < vlen


def test_middle_known_values_and_padding():
    assert get_frame_indices(12, 250, "middle") == [9, 30, 51, 72, 93, 114, 134, 155, 176, 197, 218, 239]
    assert get_frame_indices(12, 12, "middle") == list(range(12))
    assert get_frame_indices(12, 5, "middle") == [0, 1, 2, 3, 4] + [4] * 7  # padded with the last index
    assert get_frame_indices(4, 1, "middle") == [0, 0, 0, 0]


@pytest.mark.parametrize("num_frames,vlen", [nv for nv in GRID if not has_empty_range(*nv)])
@pytest.mark.parametrize("seed", [0, 1, 1234])
def test_rand_matches_official_choice_path(num_frames, vlen, seed):
    random.seed(seed)
    expected = official_get_frame_indices(num_frames, vlen, "rand")
    rng = random.Random(seed)
    assert get_frame_indices(num_frames, vlen, "rand", rng=rng) == expected
    random.seed(seed)
    official_get_frame_indices(num_frames, vlen, "rand")
    assert rng.random() == random.random()  # same amount of randomness consumed


@pytest.mark.parametrize("num_frames,vlen", [nv for nv in GRID if has_empty_range(*nv)])
@pytest.mark.parametrize("seed", [0, 7])
def test_rand_fallback_matches_official(num_frames, vlen, seed):
    assert has_empty_range(num_frames, vlen)
    np.random.seed(seed)
    random.seed(seed)
    expected = official_get_frame_indices(num_frames, vlen, "rand")
    ours = get_frame_indices(num_frames, vlen, "rand", rng=np.random.RandomState(seed))
    assert ours == expected
    acc = min(num_frames, vlen)
    assert len(set(ours[:acc])) == acc  # distinct frames, then padding
    if vlen <= num_frames:
        assert ours[:vlen] == list(range(vlen))


def test_rand_fallback_cases_exist():
    # (12, 20): intervals of 1 or 2 frames -> some empty ranges; (12, 24): all intervals of 2 -> none empty
    assert has_empty_range(12, 20) and has_empty_range(12, 23) and has_empty_range(12, 12)
    assert not has_empty_range(12, 24) and not has_empty_range(12, 250)


def test_rand_excludes_interval_end_and_is_seedable():
    # vlen 48, 12 intervals of 4 frames: official range(a, a + 3) -> a, a+1, a+2 only (never the last frame)
    seen = set()
    gen = np.random.default_rng(0)
    for _ in range(300):
        idx = get_frame_indices(12, 48, "rand", rng=gen)
        assert all(4 * k <= i <= 4 * k + 2 for k, i in enumerate(idx))
        seen.update(i % 4 for i in idx)
    assert seen == {0, 1, 2}
    a = get_frame_indices(12, 1000, "rand", rng=np.random.default_rng(5))
    b = get_frame_indices(12, 1000, "rand", rng=np.random.default_rng(5))
    c = get_frame_indices(12, 1000, "rand", rng=np.random.default_rng(6))
    assert a == b != c
    assert get_frame_indices(12, 1000, "rand", rng=3) == get_frame_indices(12, 1000, "rand", rng=random.Random(3))


def test_frame_indices_bad_arguments():
    with pytest.raises(ValueError):
        get_frame_indices(12, 0, "middle")
    with pytest.raises(ValueError):
        get_frame_indices(0, 10, "middle")
    with pytest.raises(ValueError):
        get_frame_indices(12, 10, "fps1")


def test_trim_to_30s():
    assert trim_to_30s(900, 30.0, True) == (900, 30.0)  # exactly 30 s: not trimmed (official: > 30)
    assert trim_to_30s(901, 30.0, True) == (900, 30.0)
    assert trim_to_30s(2000, 29.97, True) == (int(30 * 29.97), 30.0)
    assert trim_to_30s(2000, 29.97, False) == (2000, 2000 / 29.97)


# --------------------------------------------------------------------------------------------------
# Synthetic videos
# --------------------------------------------------------------------------------------------------

W, H, NBITS = 160, 96, 8
STRIPE = W // NBITS


def _frame_rgb(i: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[H // 2 :] = rng.integers(0, 256, (H - H // 2, W, 3), dtype=np.uint8)
    bits = np.array([(i >> k) & 1 for k in range(NBITS)], np.uint8) * 255
    img[: H // 2] = np.repeat(bits, STRIPE)[None, :, None]
    return img


def read_index(frame_chw: torch.Tensor) -> int:
    """Index encoded in a decoded (C, H, W) uint8 frame."""
    top = frame_chw[:, 8 : H // 2 - 8].float().mean(dim=(0, 1))  # (W,)
    bits = [top[k * STRIPE + 4 : (k + 1) * STRIPE - 4].mean().item() > 128 for k in range(NBITS)]
    return sum(int(b) << k for k, b in enumerate(bits))


def write_video(
    path: Path, n: int, codec="libx264", fps=25, container_options=None, pts_ms=None, codec_options=None
) -> Path:
    rng = np.random.default_rng(0)
    out = av.open(str(path), "w", options=container_options or {})
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    if codec_options:
        stream.options = codec_options
    if pts_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(_frame_rgb(i, rng), format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms(i), Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def cut_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    v = {
        "h264_mp4": write_video(d / "h264.mp4", 75),
        "faststart_mp4": write_video(d / "faststart.mp4", 75, container_options={"movflags": "faststart"}),
        "mpeg4_avi": write_video(d / "mpeg4.avi", 75, codec="mpeg4"),
        "vp9_webm": write_video(d / "vp9.webm", 40, codec="libvpx-vp9", fps=12),
        # variable frame rate in Matroska: no frame count in the header, duration x fps estimate is wrong
        "vfr_mkv": write_video(d / "vfr.mkv", 40, pts_ms=lambda i: 40 * i if i < 20 else 800 + 120 * (i - 20)),
        "short_mp4": write_video(d / "short.mp4", 5),
    }
    v["half_mp4"] = cut_half(v["h264_mp4"], d / "half.mp4")  # moov atom at the end -> cannot open
    v["half_faststart_mp4"] = cut_half(v["faststart_mp4"], d / "half_faststart.mp4")
    v["half_webm"] = cut_half(v["vp9_webm"], d / "half.webm")
    v["half_avi"] = cut_half(v["mpeg4_avi"], d / "half.avi")
    data = bytearray(v["h264_mp4"].read_bytes())  # random bytes over the middle of the mdat
    mid = len(data) // 2
    data[mid : mid + 2000] = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    v["damaged_mp4"] = d / "damaged.mp4"
    v["damaged_mp4"].write_bytes(bytes(data))
    v["text_mp4"] = d / "notes.mp4"
    v["text_mp4"].write_text("this is a text file, not a video\n" * 100)
    v["empty_mp4"] = d / "empty.mp4"
    v["empty_mp4"].write_bytes(b"")
    return v


SYNTH_INTACT = {"h264_mp4": 75, "faststart_mp4": 75, "mpeg4_avi": 75, "vp9_webm": 40, "vfr_mkv": 40, "short_mp4": 5}


def test_synthetic_writer_roundtrip(vids):
    for name, n in SYNTH_INTACT.items():
        with av.open(str(vids[name])) as c:
            got = [read_index(torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1)) for f in c.decode(video=0)]
        assert got == list(range(n)), name


@pytest.mark.parametrize("name", list(SYNTH_INTACT))
@pytest.mark.parametrize("num_frames", [12, 8])
def test_decoded_frames_are_the_requested_indices(vids, name, num_frames):
    n = SYNTH_INTACT[name]
    clip = decode_frames(vids[name], num_frames, "middle")
    assert isinstance(clip, VideoClip)
    assert clip.vlen == clip.num_decoded == n and clip.corrupt_reason is None
    assert list(clip.indices) == official_get_frame_indices(num_frames, n, "middle")
    assert clip.frames.dtype == torch.uint8 and tuple(clip.frames.shape) == (num_frames, 3, H, W)
    assert [read_index(f) for f in clip.frames] == list(clip.indices)
    assert clip.path == str(vids[name])

    rng, ref = random.Random(11), random.Random(11)
    clip = decode_frames(vids[name], num_frames, "rand", rng=rng)
    assert list(clip.indices) == get_frame_indices(num_frames, n, "rand", rng=ref)
    assert rng.getstate() == ref.getstate()  # the caller's rng advanced exactly once
    assert [read_index(f) for f in clip.frames] == list(clip.indices)


def test_short_video_is_padded(vids):
    clip = decode_frames(vids["short_mp4"], 12, "middle")
    assert clip.indices == (0, 1, 2, 3, 4) + (4,) * 7
    assert [read_index(f) for f in clip.frames] == list(clip.indices)


def test_frame_fetch_paths(vids, monkeypatch):
    """Header count right -> one pass; estimate wrong (VFR mkv) -> frame buffer; buffer off -> 2nd pass."""
    calls = []
    real_fetch = video_mod._fetch

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(video_mod, "_fetch", spy)
    a = decode_frames(vids["h264_mp4"], 12)
    b = decode_frames(vids["vfr_mkv"], 12)
    assert calls == []
    c = decode_frames(vids["vfr_mkv"], 12, max_buffer_bytes=0)
    assert calls == [str(vids["vfr_mkv"])]
    assert b.indices == c.indices and torch.equal(b.frames, c.frames)
    assert [read_index(f) for f in a.frames] == list(a.indices)


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_longer_audio_track_is_not_truncation(tmp_path, ext):
    """The truncation check uses the video track's own duration, not the container's (audio 2x longer)."""
    path = tmp_path / f"av.{ext}"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        packets = []
        for i in range(50):  # 2 s of video
            packets += vs.encode(av.VideoFrame.from_ndarray(_frame_rgb(i, rng), format="rgb24"))
        packets += vs.encode()
        for k in range(63):  # ~4 s of audio
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            packets += aus.encode(frame)
        packets += aus.encode()
        for packet in packets:
            out.mux(packet)
    with av.open(str(path)) as c:
        assert c.duration / av.time_base > 3.5
    clip = decode_frames(path, 12)
    assert clip.vlen == 50 and clip.corrupt_reason is None
    assert [read_index(f) for f in clip.frames] == list(clip.indices)


def test_trimmed30(tmp_path):
    path = write_video(tmp_path / "long.mp4", 70, fps=2)  # 35 s at 2 fps
    clip = decode_frames(path, 12, "middle", trimmed30=True)
    assert clip.vlen == 60 and clip.duration == 30.0
    assert 60 < clip.num_decoded <= 61  # decoding stopped once > 30 s were seen
    assert list(clip.indices) == official_get_frame_indices(12, 60, "middle")
    assert [read_index(f) for f in clip.frames] == list(clip.indices)
    full = decode_frames(path, 12, "middle")
    assert full.vlen == full.num_decoded == 70 and full.duration == 35.0


# --------------------------------------------------------------------------------------------------
# Real sample videos
# --------------------------------------------------------------------------------------------------

REAL = {
    "bikes.mp4": (250, [9, 30, 51, 72, 93, 114, 134, 155, 176, 197, 218, 239]),
    "carphone_distorted.mp4": (120, [4, 14, 24, 34, 44, 54, 64, 74, 84, 94, 104, 114]),
    "tree.avi": (68, [2, 7, 13, 19, 24, 30, 36, 41, 47, 53, 58, 64]),
    "Megamind_bugy.avi": (270, [10, 33, 55, 78, 100, 123, 145, 168, 190, 213, 235, 258]),
}


def sequential_frames(path: Path, wanted: set[int]) -> tuple[int, dict[int, np.ndarray], list[int]]:
    """Reference: decode every frame in order with plain PyAV; return (count, wanted frames HWC, pts)."""
    out, pts, n = {}, [], 0
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            if n in wanted:
                out[n] = frame.to_ndarray(format="rgb24")
            pts.append(frame.pts)
            n += 1
    return n, out, pts


@needs_ref_videos
@pytest.mark.parametrize("name", list(REAL))
def test_real_videos_middle_indices(name):
    path = REF_VIDEOS / name
    vlen, middle = REAL[name]
    clip = decode_frames(path, 12, "middle")
    assert clip.vlen == clip.num_decoded == vlen and clip.corrupt_reason is None
    assert list(clip.indices) == middle == official_get_frame_indices(12, vlen, "middle")
    n, ref, _ = sequential_frames(path, set(middle))
    assert n == vlen
    for t, i in enumerate(middle):
        assert torch.equal(clip.frames[t], torch.from_numpy(ref[i]).permute(2, 0, 1)), (name, i)


@needs_ref_videos
def test_tree_avi_container_lies():
    path = REF_VIDEOS / "tree.avi"
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 444  # what the container claims
    assert count_frames(path) == 68
    clip = decode_frames(path, 12, "rand", rng=random.Random(0))
    assert clip.vlen == 68 and max(clip.indices) < 68
    _, ref, _ = sequential_frames(path, set(clip.indices))
    for t, i in enumerate(clip.indices):
        assert torch.equal(clip.frames[t], torch.from_numpy(ref[i]).permute(2, 0, 1))
    assert clip.fps == pytest.approx(15.0, abs=1e-3)  # avg_frame_rate of the stream, as decord's get_avg_fps


@needs_ref_videos
def test_megamind_bugy_decode_order_not_timestamps():
    """Packed-bitstream XviD: 270 frames decode without error, but the frame pts are permuted around
    B-frames. Frames are indexed in decoder output order (the true display order), never by pts."""
    path = REF_VIDEOS / "Megamind_bugy.avi"
    clip = decode_frames(path, 12, "middle")  # on_corrupt="error": it is not considered damaged
    assert clip.vlen == 270 and clip.fps == 30.0 and clip.corrupt_reason is None

    gray = []
    pts = []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            gray.append(frame.to_ndarray(format="gray")[::4, ::4].astype(np.float32))
            pts.append(frame.pts)
    assert len(pts) == 270
    assert sorted(pts) == list(range(1, 271)) and pts != sorted(pts)  # permuted timestamps
    assert pts[:8] == [1, 2, 3, 5, 4, 6, 8, 7]
    gray = np.stack(gray)
    by_pts = gray[np.argsort(pts, kind="stable")]
    rough_decode = np.abs(np.diff(gray, axis=0)).mean()
    rough_pts = np.abs(np.diff(by_pts, axis=0)).mean()
    assert rough_decode < 0.9 * rough_pts  # decoder order is the smooth (true) order

    # our frames are the decoder-order frames (checked bit-exactly in test_real_videos_middle_indices);
    # a reader that orders frames by pts would have returned other frames at most sampled positions
    n, ref, _ = sequential_frames(path, set(clip.indices))
    assert all(torch.equal(clip.frames[t], torch.from_numpy(ref[i]).permute(2, 0, 1)) for t, i in enumerate(clip.indices))
    differs = sum(not np.array_equal(gray[i], by_pts[i]) for i in clip.indices)
    assert differs >= 6


# --------------------------------------------------------------------------------------------------
# Errors and skip policy
# --------------------------------------------------------------------------------------------------


def _assert_error(path, match: str, **kwargs) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError, match=match) as info:
        decode_frames(path, 12, **kwargs)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert str(path) in str(err) and err.path == str(path)
    return err


def test_error_missing_file(tmp_path):
    _assert_error(tmp_path / "nope.mp4", "not found")


def test_error_directory(tmp_path):
    _assert_error(tmp_path, "directory")


def test_error_text_file(vids):
    _assert_error(vids["text_mp4"], "cannot open")


def test_error_empty_file(vids):
    _assert_error(vids["empty_mp4"], "empty file")


def test_error_no_video_stream(tmp_path):
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        for k in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    _assert_error(path, "no video stream")


def test_error_truncated_mp4_moov_at_end(vids):
    # PyAV writes the moov atom last: half a file has no index at all
    for mode in ("error", "keep_decoded"):
        _assert_error(vids["half_mp4"], "cannot open", on_corrupt=mode)


@pytest.mark.parametrize("name,full", [("half_faststart_mp4", 75), ("half_webm", 40), ("half_avi", 75)])
def test_truncated_mid_stream(vids, name, full, caplog):
    err = _assert_error(vids[name], "damaged video")
    assert "keep_decoded" in err.reason
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl.data_modules.video"):
        clip = decode_frames(vids[name], 12, "middle", on_corrupt="keep_decoded")
    assert clip.corrupt_reason and 0 < clip.vlen < full
    assert list(clip.indices) == official_get_frame_indices(12, clip.vlen, "middle")
    assert [read_index(f) for f in clip.frames] == list(clip.indices)  # the decoded prefix, correctly indexed
    assert any(str(vids[name]) in r.getMessage() for r in caplog.records)


def test_damaged_mid_stream(vids):
    err = _assert_error(vids["damaged_mp4"], "damaged video")
    assert "frame" in err.reason
    clip = decode_frames(vids["damaged_mp4"], 12, on_corrupt="keep_decoded")
    assert 0 < clip.vlen < 75 and clip.corrupt_reason


def test_lost_frames_are_damage(tmp_path):
    """First keyframe missing (a badly cut file): no FFmpeg error, full timeline, but the decoder drops
    every frame until the next keyframe -> the decoded count is not the video's frame count."""
    src = write_video(tmp_path / "gop25.mp4", 75, codec_options={"g": "25"})
    dst = tmp_path / "no_first_keyframe.mp4"
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        packets = [p for p in inp.demux(in_stream) if p.dts is not None]
        assert packets[0].is_keyframe
        for packet in packets[1:]:
            packet.stream = out_stream
            out.mux(packet)
    err = _assert_error(dst, "damaged video")
    assert "lost" in err.reason
    clip = decode_frames(dst, 12, "middle", on_corrupt="keep_decoded")
    assert clip.vlen == 51 and "23 lost" in clip.corrupt_reason
    # indices count decodable frames: decodable frame 0 is the second keyframe (source frame 24)
    assert [read_index(f) - 24 for f in clip.frames] == list(clip.indices)


def test_error_is_picklable():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x/y.mp4", "boom")))
    assert isinstance(err, VideoDecodeError) and err.path == "/x/y.mp4" and str(err) == "/x/y.mp4: boom"


def test_skip_policy(vids, tmp_path, caplog):
    bad = vids["text_mp4"]
    with pytest.raises(VideoDecodeError):
        load_clip_or_skip(bad, 12)  # default: raise
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl.data_modules.video"):
        assert load_clip_or_skip(bad, 12, skip_errors=True) is None
        assert load_clip_or_skip(tmp_path / "missing.mp4", 12, skip_errors=True) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in m for m in messages) and any("missing.mp4" in m for m in messages)
    good = load_clip_or_skip(vids["h264_mp4"], 12, skip_errors=True)
    assert good is not None and good.vlen == 75

    decoder = pickle.loads(pickle.dumps(VideoDecoder(num_frames=8, sample="rand", skip_errors=True)))
    assert decoder(bad) is None
    clip = decoder(vids["h264_mp4"], rng=np.random.default_rng(0))
    assert [read_index(f) for f in clip.frames] == list(clip.indices) and len(clip.indices) == 8
    with pytest.raises(VideoDecodeError):
        VideoDecoder()(bad)


# --------------------------------------------------------------------------------------------------
# Files that end early: every intact clip accepted, every truncated copy rejected (or skipped on request)
# --------------------------------------------------------------------------------------------------


def write_gif(path: Path, n: int, fps: int = 10) -> Path:
    """An animated GIF written by PyAV (FFmpeg's gif encoder): index stripes on top, noise below."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb8"
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_frame_rgb(i, rng), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def remux_faststart(src: Path, dst: Path) -> Path:
    """The same packets in an MP4 whose index (moov) comes first: a cut file still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.dts is not None:
                packet.stream = out_stream
                out.mux(packet)
    return dst


def synthetic_generator_clip(path: Path) -> Path:
    """A clip as vidtldr_pl.data_modules.synthetic writes them (mpeg4 in MP4, index at the end)."""
    from vidtldr_pl.data_modules.synthetic import write_mp4

    frames = np.random.default_rng(3).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    write_mp4(path, frames, fps=8)
    return path


CUTS = (0.25, 0.5, 0.75, 0.9)


@pytest.fixture(scope="module")
def intact_clips(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """name -> (path, frames): the reference clips, copied; a faststart remux of bikes.mp4; our GIF; a clip of
    the synthetic generator."""
    d = tmp_path_factory.mktemp("intact")
    clips = {}
    for name, (vlen, _) in REAL.items():
        (d / name).write_bytes((REF_VIDEOS / name).read_bytes())
        clips[name] = (d / name, vlen)
    clips["bikes_faststart.mp4"] = (remux_faststart(d / "bikes.mp4", d / "bikes_faststart.mp4"), 250)
    clips["noise.gif"] = (write_gif(d / "noise.gif", 30), 30)
    clips["synthetic.mp4"] = (synthetic_generator_clip(d / "synthetic.mp4"), 16)
    return clips


@needs_ref_videos
@pytest.mark.parametrize("name", [*REAL, "bikes_faststart.mp4", "noise.gif", "synthetic.mp4"])
def test_intact_clips_are_accepted(intact_clips, name):
    path, vlen = intact_clips[name]
    clip = decode_frames(path, 12, "middle")
    assert clip.vlen == clip.num_decoded == vlen and clip.corrupt_reason is None
    if name == "noise.gif":
        assert [read_index(f) for f in clip.frames] == list(clip.indices)


def _evidence_pattern(name: str) -> str:
    """What the error must say for a cut copy of ``name``: the expected vs the found extent."""
    if name.endswith(".avi"):  # idx1 (written last) is gone: the header's frame count against the frames read
        header = {"Megamind_bugy.avi": 270, "tree.avi": 444}[name]  # tree.avi's header claims 444 (68 stored)
        return rf"the stream header declares {header} frames but only \d+ could be read"
    if name.endswith(".gif"):  # unless the decoder fails on the cut image itself
        return r"the GIF does not end with its trailer \(00 3B\) after \d+ frames|decoding failed after \d+ frame"
    if name == "bikes_faststart.mp4":  # the index (first in the file) points past the end of the cut file
        return r"the container index (points at byte \d+ but the file has \d+ bytes|lists 250 frames but only)"
    return "cannot open as a media container"  # MP4 with its index at the end: nothing to read


@needs_ref_videos
@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("name", [*REAL, "bikes_faststart.mp4", "noise.gif", "synthetic.mp4"])
def test_truncated_copies_are_rejected(intact_clips, tmp_path, caplog, name, cut):
    src, vlen = intact_clips[name]
    data = src.read_bytes()
    path = tmp_path / f"cut{int(cut * 100)}_{name}"
    path.write_bytes(data[: int(len(data) * cut)])

    err = _assert_error(path, _evidence_pattern(name))
    assert err.reason.startswith(("damaged video", "cannot open"))
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl.data_modules.video"):
        assert load_clip_or_skip(path, 12, skip_errors=True) is None  # the logged skip
    assert any(str(path) in r.getMessage() and "Skipping" in r.getMessage() for r in caplog.records)
    if err.reason.startswith("damaged video"):  # opened: keep_decoded samples from the frames that decoded
        clip = decode_frames(path, 12, "middle", on_corrupt="keep_decoded")
        assert 0 < clip.vlen < vlen and clip.corrupt_reason


@needs_ref_videos
def test_half_of_megamind_is_not_a_shorter_video(tmp_path):
    """The reported case: half the bytes of Megamind_bugy.avi used to pass as a complete, shorter video."""
    data = (REF_VIDEOS / "Megamind_bugy.avi").read_bytes()
    path = tmp_path / "Megamind_half.avi"
    path.write_bytes(data[: len(data) // 2])
    err = _assert_error(path, r"declares 270 frames but only 109 could be read")
    assert "truncated" in err.reason


def test_truncated_at_a_packet_boundary(tmp_path):
    """A cut between two packets: no partial packet, no FFmpeg error or corrupt flag; only the missing index
    (AVI), the index pointing past the end (faststart MP4) or the declared duration (Matroska) tell."""
    cases = {
        "avi": (write_video(tmp_path / "v.avi", 75, codec="mpeg4"), r"declares 75 frames but only \d+ could be read"),
        "mp4": (write_video(tmp_path / "v.mp4", 75, container_options={"movflags": "faststart"}), "container index"),
        "mkv": (write_video(tmp_path / "v.mkv", 75), r"the video track ends at [\d.]+ s but declares 3.00 s"),
    }
    for ext, (src, pattern) in cases.items():
        with av.open(str(src)) as c:
            ends = [p.pos + p.size for p in c.demux(video=0) if p.size]
        data = src.read_bytes()
        path = tmp_path / f"cut.{ext}"
        path.write_bytes(data[: ends[len(ends) // 2]])  # right after the middle packet
        _assert_error(path, pattern)


def test_damage_report_trusts_the_index_over_the_header():
    """tree.avi's evidence (header 444 frames, index of the 68 stored ones spread over the 444 slots) is intact;
    the same header with only the first frame indexed (a truncated AVI after probing) is not."""
    from dataclasses import replace

    from vidtldr_pl.data_modules.damage import StreamEvidence, damage_report

    tree = StreamEvidence(file_size=1250680, header_frames=444, indexed_frames=68, index_end=1243559,
                          index_duration=29.6, track_duration=29.6, container_duration=29.6, fps=15.0, packets=68,
                          decoded=68, flagged=0, covered=29.6)
    assert damage_report(tree, 0.9) is None
    cut = replace(tree, file_size=312670, indexed_frames=1, index_end=28233, index_duration=1 / 15,
                  track_duration=7.4, container_duration=7.4, packets=18, decoded=18, covered=7.47)
    assert "declares 444 frames but only 18 could be read" in damage_report(cut, 0.9)
    # a longer audio track: the container's duration only within min_coverage; the track's own within a frame + 1 %
    audio = StreamEvidence(file_size=1000, header_frames=0, indexed_frames=0, index_end=-1, index_duration=0.0,
                           track_duration=0.0, container_duration=2.1, fps=25.0, packets=50, decoded=50, flagged=0,
                           covered=2.0)
    assert damage_report(audio, 0.9) is None
    assert "ends at 2.00 s but declares 2.10 s" in damage_report(replace(audio, track_duration=2.1), 0.9)
    assert damage_report(replace(audio, track_duration=2.04), 0.9) is None  # one frame short: a missing duration


# --------------------------------------------------------------------------------------------------
# keep_decoded is reproducible; errors survive DataLoader workers and point at skip_errors
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bit_damaged_mp4(tmp_path_factory) -> Path:
    """Random bytes over five places of an H.264 stream: the decoder conceals errors (frames flagged corrupt)."""
    d = tmp_path_factory.mktemp("bit_damaged")
    data = bytearray(write_video(d / "src.mp4", 150).read_bytes())
    rng = np.random.default_rng(1)
    for _ in range(5):
        pos = int(rng.integers(len(data) // 10, len(data) * 9 // 10))
        data[pos : pos + 500] = rng.integers(0, 256, 500, dtype=np.uint8).tobytes()
    path = d / "damaged.mp4"
    path.write_bytes(bytes(data))
    return path


def test_keep_decoded_is_deterministic(bit_damaged_mp4):
    """Frame threads conceal damaged frames depending on thread timing (the same call returned other frames);
    a damaged file is decoded again on one thread."""
    _assert_error(bit_damaged_mp4, "damaged video")
    reference = decode_frames(bit_damaged_mp4, 12, "middle", on_corrupt="keep_decoded", thread_count=1)
    assert reference.corrupt_reason
    for kwargs in ({}, {}, {}, {"thread_count": 8, "thread_type": "FRAME"}):
        clip = decode_frames(bit_damaged_mp4, 12, "middle", on_corrupt="keep_decoded", **kwargs)
        assert (clip.vlen, clip.indices) == (reference.vlen, reference.indices)
        assert torch.equal(clip.frames, reference.frames)
    rand = [decode_frames(bit_damaged_mp4, 8, "rand", rng=5, on_corrupt="keep_decoded").frames for _ in range(3)]
    assert torch.equal(rand[0], rand[1]) and torch.equal(rand[0], rand[2])


class _Videos(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.decode = paths, VideoDecoder(num_frames=4)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.decode(self.paths[i]).frames


def test_error_survives_a_dataloader_worker(vids):
    """A worker sends its exception as type + traceback text and the loader rebuilds it with one argument:
    the VideoDecodeError comes back with its path and a one-line reason that names skip_errors."""
    loader = torch.utils.data.DataLoader(_Videos([vids["h264_mp4"], vids["half_avi"]]), batch_size=1, num_workers=1)
    with pytest.raises(VideoDecodeError) as info:
        list(loader)
    err = info.value
    assert err.path == str(vids["half_avi"]) and "\n" not in str(err)
    assert str(err) == f"{err.path}: {err.reason}"
    assert err.reason.startswith("damaged video") and "skip_errors" in err.reason
    assert "Traceback" not in str(err) and "DataLoader worker" not in str(err)


def test_converted_frame_is_freed_in_a_forked_worker(vids):
    """_to_rgb converts on one swscale thread: a converted frame still alive when a DataLoader worker forks (held
    by a traceback, say) is freed there without waiting for converter threads that the fork did not copy."""
    with av.open(str(vids["h264_mp4"])) as c:
        frame = next(c.decode(video=0))
    video_mod._to_rgb(frame)
    held = [frame]
    del frame
    child = multiprocessing.get_context("fork").Process(target=held.clear)  # the child frees the frame
    child.start()
    child.join(timeout=30)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0


def test_error_rebuilt_from_a_message():
    text = (
        "Caught VideoDecodeError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise VideoDecodeError(path, reason)\n'
        "vidtldr_pl.data_modules.video.VideoDecodeError: /data/a b/c.mp4: cannot open: VideoDecodeError: nested\n"
    )
    err = VideoDecodeError(text)
    assert (err.path, err.reason) == ("/data/a b/c.mp4", "cannot open: VideoDecodeError: nested")
    assert str(pickle.loads(pickle.dumps(err))) == "/data/a b/c.mp4: cannot open: VideoDecodeError: nested"
    assert VideoDecodeError("/x.mp4: boom").path == "/x.mp4"


def test_skip_hint_names_the_option(vids):
    with pytest.raises(VideoDecodeError, match="set skip_errors to log and skip such files") as info:
        VideoDecoder()(vids["half_webm"])
    assert info.value.path == str(vids["half_webm"])
    assert "skip_errors" not in str(_assert_error(vids["half_webm"], "damaged"))  # decode_frames has no such option


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


def test_test_transform_shape_and_constant_values():
    colour = torch.tensor([200, 100, 30], dtype=torch.uint8)
    clip = colour.view(1, 3, 1, 1).expand(4, 3, 144, 176).contiguous()
    out = VideoTestTransform(224)(clip)
    assert out.dtype == torch.float32 and tuple(out.shape) == (4, 3, 224, 224)
    expected = (colour.float() / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-6)
    assert tuple(VideoTestTransform((112, 160))(clip).shape) == (4, 3, 112, 160)


def test_resize_is_the_unantialiased_float_path():
    x = torch.randint(0, 256, (3, 3, 240, 320), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = resize_uint8(x, 224)
    assert ours.dtype == torch.uint8
    tv = TF.resize(x.float(), [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=False)
    assert torch.equal(ours, tv.clamp(0, 255).round().to(torch.uint8))  # torchvision 0.13 uint8 semantics
    raw = F.interpolate(x.float(), size=(224, 224), mode="bicubic", align_corners=False)
    assert torch.equal(ours, raw.clamp(0, 255).round().to(torch.uint8))
    aa = TF.resize(x.float(), [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert not torch.equal(ours, aa.clamp(0, 255).round().to(torch.uint8))  # the antialias pin matters
    out = VideoTestTransform(224)(x)
    ref = TF.normalize(ours.float().div(255.0), list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.equal(out, ref)


def test_train_transform_same_crop_for_all_frames():
    base = torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    clip = base.expand(6, 3, 120, 160).contiguous()
    outs = {}
    for seed in range(8):
        out = VideoTrainTransform(112, seed=seed)(clip)
        assert out.dtype == torch.float32 and tuple(out.shape) == (6, 3, 112, 112)
        assert all(torch.equal(out[0], out[t]) for t in range(1, 6))  # identical frames stay identical
        outs[seed] = out
    assert torch.equal(VideoTrainTransform(112, seed=3)(clip), outs[3])  # seedable
    assert not torch.equal(outs[0], outs[1])

    # frames that differ by a constant stay different by exactly that constant -> same crop and flip
    ramp = torch.linspace(40, 200, 160).view(1, 1, 160).expand(3, 120, 160)
    smooth = (ramp + torch.linspace(0, 20, 120).view(1, 120, 1)).round().to(torch.uint8)
    clip2 = torch.stack([smooth + t for t in range(4)])
    out = VideoTrainTransform(64, seed=5)(clip2)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for t in range(1, 4):
        assert torch.allclose(out[t] - out[0], (t / 255.0 / std).expand(3, 64, 64), atol=1e-5)


def test_train_transform_params_follow_torchvision():
    for seed in range(50):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(torch.zeros(3, 240, 320), [0.5, 1.0], [3 / 4, 4 / 3])
        torch.manual_seed(seed)
        assert random_resized_crop_params(240, 320, (0.5, 1.0), (3 / 4, 4 / 3)) == expected
    # full-image crop + forced flip == flipped test transform
    x = torch.randint(0, 256, (2, 3, 90, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    t = VideoTrainTransform(56, scale=(1.0, 1.0), ratio=(120 / 90, 120 / 90), flip_p=1.0, seed=0)
    assert torch.equal(t(x), VideoTestTransform(56)(x).flip(-1))


# --------------------------------------------------------------------------------------------------
# Matroska / WebM: holes in the packet timeline, a stream short of the segment duration; deterministic messages
# --------------------------------------------------------------------------------------------------
WEBM_FRAMES = 90  # 3 s at 30 fps, a key frame every second


def _write_webm(path: Path, *, audio: bool = False, drop: range = range(0)) -> Path:
    """VP8 in WebM (+ a silent Opus track); the packets of the frames in ``drop`` are encoded but not written,
    leaving a hole in the timeline exactly as a demuxer resynchronising past a damaged cluster does."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "30", "deadline": "realtime", "cpu-used": "8"}
        stream.thread_count = 1
        sound = container.add_stream("libopus", rate=48000) if audio else None
        packets = []
        for i in range(WEBM_FRAMES):
            packets += stream.encode(av.VideoFrame.from_ndarray(np.roll(base, 2 * i, axis=1), format="rgb24"))
        packets += stream.encode()
        for packet in packets:
            if int(packet.pts) not in drop:
                container.mux(packet)
        if sound is not None:
            for k in range(0, 48000 * WEBM_FRAMES // 30, 960):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
                frame.sample_rate, frame.pts = 48000, k
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def _without_track_durations(path: Path) -> Path:
    """The same file without the per-track DURATION tags (as muxers that write no tags, or write them at the end, and
    so lose them when the file is cut): only the segment's duration remains."""
    data = path.read_bytes()
    assert b"DURATION" in data
    path.write_bytes(data.replace(b"DURATION", b"DURATIOX"))
    return path


@pytest.mark.parametrize("audio", [False, True])
def test_webm_intact_is_read_whole(tmp_path, audio):
    path = _without_track_durations(_write_webm(tmp_path / "v.webm", audio=audio))
    clip = decode_frames(path, 8)
    assert clip.num_decoded == WEBM_FRAMES and clip.corrupt_reason is None


@pytest.mark.parametrize("audio", [False, True])
def test_webm_hole_in_the_packet_timeline_is_damage(tmp_path, audio):
    path = _write_webm(tmp_path / "hole.webm", audio=audio, drop=range(35, 59))  # 24 frames, 0.8 s, mid-GOP
    err = _assert_error(path, "damaged video")
    assert "hole of 0.80 s at 1.17 s" in err.reason and "\n" not in str(err)
    clip = decode_frames(path, 8, on_corrupt="keep_decoded")
    assert clip.num_decoded == WEBM_FRAMES - 24 and "hole" in clip.corrupt_reason


@pytest.mark.parametrize("audio", [False, True])
def test_webm_cut_short_of_the_segment_duration_is_damage(tmp_path, audio):
    """Without track durations only the segment's remains: a cut that keeps 93-96 % of the duration used to pass
    the 90 % coverage check."""
    path = _without_track_durations(_write_webm(tmp_path / "v.webm", audio=audio))
    data = path.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) * 98 // 100])  # the last 2 % of the bytes: 0.13-0.2 s of the 3 s
    err = _assert_error(cut, "damaged video")
    assert "the tracks end at 2.8" in err.reason and "but the container declares 3.0" in err.reason


def test_webm_byte_flips_never_lose_frames_silently(tmp_path):
    """Eight flipped bytes at 25 places of a WebM: each copy is refused as damaged or decodes every frame."""
    data = _write_webm(tmp_path / "v.webm").read_bytes()
    rng = np.random.default_rng(0)
    for n in range(25):
        flipped = bytearray(data)
        pos = int(rng.integers(200, len(data) - 8))
        flipped[pos : pos + 8] = bytes(b ^ 0xFF for b in flipped[pos : pos + 8])
        path = tmp_path / "flip.webm"
        path.write_bytes(bytes(flipped))
        try:
            clip = decode_frames(path, 8, thread_count=1)
        except VideoDecodeError:
            continue
        assert clip.num_decoded == WEBM_FRAMES, (n, pos, clip.num_decoded)


def test_damage_message_is_the_same_on_every_call(bit_damaged_mp4, monkeypatch):
    """Frame threads lose a number of frames that depends on thread timing: the message reports the one-thread
    decode, whatever the threads of the call."""
    real_scan = video_mod._scan
    calls = iter(range(100))

    def timing_dependent(path, *args, thread_count: int, **kwargs):
        scan = real_scan(path, *args, thread_count=thread_count, **kwargs)
        if thread_count != 1:  # what frame threads do: another count on every call
            scan.damage = f"the decoder output {100 + next(calls)} frames from 150 packets"
        return scan

    monkeypatch.setattr(video_mod, "_scan", timing_dependent)
    messages = {_assert_error(bit_damaged_mp4, "damaged video", **kw).reason
                for kw in ({}, {}, {"thread_count": 8, "thread_type": "FRAME"}, {"thread_count": 1})}
    assert len(messages) == 1, messages


# --------------------------------------------------------------------------------------------------
# Media edges: still images named as videos, frames resized as they decode, rotation reported once
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_still_image_renamed_mp4_is_refused_unless_allowed(tmp_path, fmt):
    from PIL import Image

    path = tmp_path / "photo.mp4"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(path, format=fmt)
    err = _assert_error(path, "a still image")
    assert f"a still image ({fmt.lower()}), not a video" in err.reason and "allow_images" in err.reason
    clip = decode_frames(path, 4, allow_images=True)
    assert tuple(clip.frames.shape) == (4, 3, 40, 60) and clip.num_decoded == 1
    assert VideoDecoder(num_frames=2, allow_images=True)(path).num_decoded == 1


def test_frames_are_resized_as_they_decode(vids, monkeypatch):
    """With a per-frame resize, the kept frames are small from the start (no full-resolution stack) and the clip
    equals resizing the full-resolution clip afterwards."""
    from functools import partial

    from vidtldr_pl.data_modules.transforms import resize_uint8

    resize = partial(resize_uint8, size=24)
    kept_shapes = []
    real = video_mod._frame_tensor

    def spy(frame, fn):
        out = real(frame, fn)
        kept_shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(video_mod, "_frame_tensor", spy)
    for name in ("h264_mp4", "vfr_mkv"):
        kept_shapes.clear()
        small = decode_frames(vids[name], 12, resize=resize)
        assert kept_shapes and set(kept_shapes) == {(3, 24, 24)}, name
        full = decode_frames(vids[name], 12)
        assert small.indices == full.indices and torch.equal(small.frames, resize_uint8(full.frames, 24)), name


def test_rotation_is_reported_once_per_file(tmp_path, caplog):
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 48, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 32, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl.data_modules.video"):
        first = decode_frames(path, 4)
        decode_frames(path, 4, "rand", rng=0)
    lines = [r.getMessage() for r in caplog.records if "rotation" in r.getMessage()]
    assert lines == [f"{path}: the file asks for a 90 degree rotation on display; its frames are read as stored, not "
                     "rotated (as the official decord pipeline reads them)"]
    assert tuple(first.frames.shape[-2:]) == (48, 32)  # as stored
