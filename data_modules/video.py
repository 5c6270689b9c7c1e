"""Video decoding and frame sampling that reproduce the official UMT / vid-TLDR data path.

The official code reads videos with decord and samples frame indices with UMT's ``get_frame_indices``
(``dataset/video_utils.py``). torchvision 0.29 has no video reader, so this module decodes with PyAV
(bundled FFmpeg) and reproduces the index rule exactly.

Public API
----------
- :func:`get_frame_indices` -- the official index rule ("middle" for test, "rand" for training).
- :func:`decode_frames` -- decode one clip: uint8 frames ``(T, C, H, W)`` + metadata (:class:`VideoClip`).
- :func:`load_clip_or_skip` -- the same with a skip policy (log a warning and return ``None``).
- :class:`VideoDecoder` -- a small picklable config object for datasets / DataLoader workers.
- :func:`count_frames` -- number of decodable frames (decodes the whole stream).
- :class:`VideoDecodeError` -- raised for every unreadable / damaged file; the message names the file.

Design decisions
----------------
* **Frame count = frames the decoder outputs.** The container's frame count is never trusted
  (``tree.avi``'s header claims 444 frames at 15 fps; only 68 frames are stored, their timestamps
  spread over the 444 slots). Frame ``i`` is the ``i``-th frame in decoder output order; timestamps are
  never used to order or select frames (``Megamind_bugy.avi`` carries permuted timestamps, see below).
* **One decode pass, bounded memory.** Before decoding, the indices are computed from the container's
  claimed frame count (estimated as duration x fps when the header has none, e.g. WebM) with a *copy*
  of the random generator. During the single decode pass only those frames are converted to RGB. If
  the true count (known at the end) gives the same indices -- the common case -- nothing else is
  needed, and the caller's generator is advanced exactly as if the indices had been drawn from the
  true count. Otherwise the needed frames come from a second decode pass (which stops at the last
  needed frame), or, when the count was only an estimate, from the ``av.VideoFrame`` objects kept
  during the pass while their total size stays under ``max_buffer_bytes`` (keeping frames alive costs
  about 25 % decode speed, so this is not done when the header gives a count). Long videos are never
  held in memory as RGB.
* **Damage handling** (``on_corrupt``). A file counts as damaged when any of these happens:
  (1) FFmpeg raises while demuxing / decoding, (2) the demuxer or decoder flags a packet / frame as
  corrupt, (3) the decoder outputs fewer frames than the demuxer delivered non-empty packets (frames
  were lost: with many frame threads FFmpeg can drop the frames after a bitstream error *without*
  raising), (4) the file ends early: fewer packets than its container index lists (or an index pointing
  past the end of the file), fewer than its stream header declares when no index covers those frames,
  a packet timeline short of the video track's declared duration (by more than a frame + 1 %) or of
  ``min_coverage`` of the container's duration (Matroska / WebM: all tracks must reach the segment's duration
  within a frame + 1 %), a GIF without its trailer; (5) a Matroska / WebM packet timeline with a hole (the demuxer
  resynchronised past damaged data and dropped the frames between). A
  truncated AVI / MKV / WebM / faststart MP4 / GIF just stops early without any FFmpeg error; which
  evidence is trusted, and why not the bit rate, is in :mod:`vidtldr_pl.data_modules.damage`. (An MP4 whose ``moov``
  index is at the end cannot be opened at all when truncated.) Bit errors that the decoder conceals
  without losing frames are not detected -- the frame count stays right.
  In every such case the decoded frame count cannot be trusted, so the indices -- which are a function
  of the frame count -- would silently point at the wrong moments of the video. Hence the default
  ``on_corrupt="error"`` raises :class:`VideoDecodeError`. ``on_corrupt="keep_decoded"`` instead
  treats the frames that did decode as the whole video (``vlen`` = number of decoded frames), logs a
  warning and records the reason in :attr:`VideoClip.corrupt_reason`; it decodes a damaged file on one
  thread, so the same call returns the same frames every time (frame threads conceal errors depending on
  thread timing). A file from which no frame at all decodes always raises. Check (3) can also fire for
  legitimate but unusual streams (field-coded interlaced H.264 with one packet per field, open-GOP cuts
  whose leading frames cannot be decoded); ``keep_decoded`` handles those correctly because it uses the
  decoded count. :class:`VideoDecoder` / :func:`load_clip_or_skip` with ``skip_errors`` log and skip such
  files instead.
* **``Megamind_bugy.avi``** (OpenCV's "bugy" sample): packed-bitstream XviD (MPEG-4 ASP with B-frames)
  in AVI. It decodes completely -- 270 frames, no FFmpeg error, no corrupt flag, full timeline -- but
  the frames' ``pts`` come out permuted (1, 2, 3, 5, 4, 6, 8, 7, ...): AVI has no real presentation
  timestamps and the per-chunk ones FFmpeg derives do not survive the packed B-frame reordering. The
  decoder output order is the true display order (consecutive frames differ less in that order than in ``pts``
  order; checked in the tests). Because frames are indexed by decoder output order, the file is read
  normally (``vlen=270``, 30 fps) and is **not** treated as damaged; a timestamp-based reader (seek to
  ``pts``, or sort frames by ``pts``) would return wrong frames here.
* **DiDeMo ``trimmed30``**: as the official code, ``duration = vlen / fps``; if it is > 30 s only
  ``vlen = int(30 * fps)`` frames are sampled from. Decoding stops as soon as more than 30 s worth of
  frames have been decoded (the rest of the file is then not inspected for damage).
* **Media edges.** A still image (PNG, JPEG, ... even when named ``.mp4``) is refused unless ``allow_images``
  (then it is a one-frame video); GIFs are videos. A file that asks for a display rotation (a phone video's display
  matrix) is read as stored, as the official decord pipeline reads it, and logged once per file and process.
  ``resize`` (what the evaluation DataModules pass: their transform's per-frame resize) shrinks each sampled frame
  as soon as it is converted, so memory does not grow with the source resolution (BENCHMARKS.md, "Decoding memory").
* **Deterministic messages**: a damaged file is decoded again on one thread before its error (or its
  ``keep_decoded`` warning) is written, so the counts in the message do not depend on thread timing.
* **No open handles between calls**: every call opens and closes its own container, so the functions
  and :class:`VideoDecoder` are safe in DataLoader workers (fork or spawn) and picklable.

Known, accepted difference from the official pipeline: RGB conversion is FFmpeg's swscale via PyAV
instead of decord's; values can differ by a few levels for some colour-space / range flags.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import av
import numpy as np
import torch

from .damage import StreamEvidence, damage_report, has_gif_trailer
from vidtldr_pl.errors import VideoDecodeError

__all__ = [
    "OnCorrupt",
    "RandomSource",
    "SampleType",
    "VideoClip",
    "VideoDecodeError",
    "VideoDecoder",
    "count_frames",
    "decode_frames",
    "get_frame_indices",
    "load_clip_or_skip",
    "trim_to_30s",
]

logger = logging.getLogger(__name__)

IndexRule = Callable[[int, int, object], Sequence[int]]
#: ``"middle"`` / ``"rand"`` (UMT's rule), or an :data:`IndexRule` ``rule(num_frames, vlen, rng) -> indices`` (any
#: number of indices, each in ``[0, vlen)``; a picklable object for DataLoader workers, e.g. vidtldr_pl.data_modules.views).
SampleType = Union[Literal["middle", "rand"], IndexRule]
OnCorrupt = Literal["error", "keep_decoded"]
#: Accepted random sources. ``int`` seeds a new ``random.Random``; ``None`` uses a fresh, OS-seeded one.
RandomSource = Union[random.Random, np.random.Generator, np.random.RandomState, int, None]

#: Appended to the errors of :func:`load_clip_or_skip` / :class:`VideoDecoder` (the option of the datamodules too).
SKIP_HINT = "(fix or remove the file, or set skip_errors to log and skip such files)"
#: How a damaged video's error names the way out: the DataModules' ``on_corrupt`` option, as a CLI user types it.
KEEP_DECODED_HINT = ("To sample from the frames that decoded, set on_corrupt: keep_decoded "
                     "(--data.init_args.on_corrupt=keep_decoded)")

_FFMPEG_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


def _ffmpeg_message(exc: BaseException) -> str:
    """``"<ErrorType>: <FFmpeg's message>"`` without the file name FFmpeg appends (the error names it)."""
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


# --------------------------------------------------------------------------------------------------
# Frame indices (official UMT rule)
# --------------------------------------------------------------------------------------------------


def _resolve_rng(rng: RandomSource) -> random.Random | np.random.Generator | np.random.RandomState:
    if rng is None:
        return random.Random()
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError("rng must be a random.Random, numpy Generator/RandomState, int seed or None")
    if isinstance(rng, (int, np.integer)):
        return random.Random(int(rng))
    if isinstance(rng, (random.Random, np.random.Generator, np.random.RandomState)):
        return rng
    raise TypeError(f"unsupported rng type {type(rng).__name__}")


def _choice(gen: random.Random | np.random.Generator | np.random.RandomState, start: int, stop: int) -> int:
    """One uniform draw from ``range(start, stop)`` (``stop`` excluded)."""
    if isinstance(gen, random.Random):
        return gen.choice(range(start, stop))  # identical to the official ``random.choice`` call
    if isinstance(gen, np.random.Generator):
        return int(gen.integers(start, stop))
    return int(gen.randint(start, stop))


def _random_subset(gen: random.Random | np.random.Generator | np.random.RandomState, n: int, k: int) -> list[int]:
    """``sorted(permutation(n)[:k])`` -- the official fallback (uniform random k-subset, sorted)."""
    if isinstance(gen, random.Random):
        return sorted(gen.sample(range(n), k))
    return sorted(int(i) for i in gen.permutation(n)[:k])


def get_frame_indices(
    num_frames: int,
    vlen: int,
    sample: SampleType = "rand",
    *,
    rng: RandomSource = None,
) -> list[int]:
    """Frame indices exactly as UMT's ``get_frame_indices`` for ``sample in ("rand", "middle")``.

    ``acc = min(num_frames, vlen)``; ``[0, vlen)`` is split at ``np.linspace(0, vlen, acc + 1).astype(int)``
    into ``acc`` ranges ``(start, end_excl - 1)``.

    - ``"middle"``: ``(start + end) // 2`` of each range.
    - ``"rand"``: ``choice(range(start, end))`` per range -- the official code excludes ``end`` (= the last
      frame of the interval); kept. If any range is empty (``start == end``, i.e. an interval of one frame)
      the official code falls back to ``sorted(permutation(vlen)[:acc])``; so does this one.
    - Fewer than ``num_frames`` indices (``vlen < num_frames``) are padded with the last index.

    Args:
        num_frames: frames wanted (``T``), >= 1.
        vlen: number of frames in the video, >= 1.
        sample: ``"middle"`` (deterministic, evaluation) or ``"rand"`` (training); or an index rule
            ``rule(num_frames, vlen, rng)`` whose indices are returned as they are (checked to lie in ``[0, vlen)``).
        rng: random source for ``"rand"``. With ``random.Random(s)`` the non-fallback draws equal the official
            code's after ``random.seed(s)``; with ``np.random.RandomState(t)`` the fallback equals the
            official one after ``np.random.seed(t)``. ``np.random.Generator`` is also accepted. ``None``:
            a fresh OS-seeded ``random.Random`` (pass a seeded source for reproducibility).

    Returns:
        ``num_frames`` Python ints in ``[0, vlen)``, non-decreasing.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if vlen < 1:
        raise ValueError(f"vlen must be >= 1, got {vlen}")
    if callable(sample):  # a custom rule: its indices as they are, checked
        indices = [int(i) for i in sample(num_frames, vlen, _resolve_rng(rng))]
        if not indices or min(indices) < 0 or max(indices) >= vlen:
            raise ValueError(f"index rule {sample!r} gave indices outside [0, {vlen}): {indices[:8]}...")
        return indices
    if sample not in ("rand", "middle"):
        raise ValueError(f"sample must be 'rand' or 'middle', got {sample!r}")

    acc = min(num_frames, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc + 1).astype(int)
    ranges = [(int(intervals[i]), int(intervals[i + 1]) - 1) for i in range(acc)]
    if sample == "rand":
        gen = _resolve_rng(rng)
        if all(end > start for start, end in ranges):
            indices = [_choice(gen, start, end) for start, end in ranges]
        else:  # official: random.choice(range(x, x)) raises -> except branch
            indices = _random_subset(gen, vlen, acc)
    else:
        indices = [(start + end) // 2 for start, end in ranges]

    if len(indices) < num_frames:
        indices = indices + [indices[-1]] * (num_frames - len(indices))
    return indices


def trim_to_30s(vlen: int, fps: float, trimmed30: bool) -> tuple[int, float]:
    """Official DiDeMo rule: ``duration = vlen / fps``; if ``trimmed30`` and ``duration > 30``:
    ``(int(30 * fps), 30.0)``. Returns ``(vlen, duration)``; ``duration`` is 0.0 when ``fps`` is unknown."""
    if fps <= 0:
        return vlen, 0.0
    duration = vlen / float(fps)
    if trimmed30 and duration > 30:
        return int(30 * float(fps)), 30.0
    return vlen, duration


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VideoClip:
    """A decoded clip.

    Attributes:
        frames: uint8 tensor ``(T, C, H, W)`` (RGB), ``T == len(indices)``.
        indices: the sampled frame indices (decoder output order), length ``T``.
        vlen: number of frames the indices were drawn from (after ``trimmed30``; after damage handling).
        fps: the stream's average frame rate (``avg_frame_rate``, as decord's ``get_avg_fps``); if the
            container has none, decoded frames / declared duration; 0.0 if unknown.
        duration: ``vlen / fps`` (30.0 when trimmed), as the official loader returns.
        path: the file.
        num_decoded: frames decoded in the counting pass (``>= vlen``; larger when ``trimmed30`` applied).
        corrupt_reason: ``None`` for an intact file; the damage found when ``on_corrupt="keep_decoded"``.
    """

    frames: torch.Tensor
    indices: tuple[int, ...]
    vlen: int
    fps: float
    duration: float
    path: str
    num_decoded: int
    corrupt_reason: str | None = None


@dataclass
class _ScanResult:
    num_decoded: int
    fps: float
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    buffer: list[av.VideoFrame] | None = None
    damage: str | None = None
    stopped_early: bool = False


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return 0.0


def _parse_hms(value: str) -> float:
    """``"HH:MM:SS.fffffffff"`` (Matroska per-track DURATION tag) -> seconds; 0.0 if malformed."""
    try:
        h, m, sec = value.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (ValueError, AttributeError):
        return 0.0


def _track_duration_s(stream: av.video.stream.VideoStream) -> float:
    """Duration the file declares for the video track itself (stream header, else Matroska's per-track
    ``DURATION`` tag); 0.0 if none."""
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return _parse_hms(stream.metadata.get("DURATION", "")) if stream.metadata else 0.0


def _container_duration_s(container: av.container.InputContainer) -> float:
    """Duration the container declares (may include a longer audio track); 0.0 if unknown."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return 0.0


def _declared_duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """The video track's declared duration, else the container's."""
    return _track_duration_s(stream) or _container_duration_s(container)


def _open(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except _FFMPEG_ERRORS as exc:
        raise VideoDecodeError(
            path, f"cannot open as a media container (not a video, or damaged/truncated header; {_ffmpeg_message(exc)})"
        ) from exc


def _video_stream(container: av.container.InputContainer, path: str, thread_type: str, thread_count: int):
    if not container.streams.video:
        raise VideoDecodeError(path, f"no video stream (container format {container.format.name!r})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # e.g. an MP4 cut inside its sample description
        raise VideoDecodeError(path, "the video stream has no codec parameters (damaged or truncated header)")
    if thread_type:
        stream.thread_type = thread_type
    stream.codec_context.thread_count = thread_count
    return stream


def _index_summary(stream: av.video.stream.VideoStream, fps: float) -> tuple[int, int, float]:
    """The container's index of the stream as stored (read it before demuxing: FFmpeg adds entries while it
    reads an unindexed file): ``(non-empty entries, last byte pointed at or -1, seconds from the stream start
    to the end of the last indexed frame or 0.0)``."""
    count, end, last_ts = 0, -1, None
    for entry in stream.index_entries:
        if entry.size > 0:
            count += 1
            end = max(end, entry.pos + entry.size)
            last_ts = entry.timestamp if last_ts is None else max(last_ts, entry.timestamp)
    if last_ts is None or stream.time_base is None or fps <= 0:
        return count, end, 0.0
    return count, end, float((last_ts - (stream.start_time or 0)) * stream.time_base) + 1.0 / fps


def _holes(spans: list[tuple[int, int, bool]], start: int, time_base: float) -> dict[str, float]:
    """Gaps between a packet's end (pts + duration) and the next packet's pts, in pts order, where packets carry a
    duration (without one, variable frame rate cannot be told from a hole): the largest (``hole``, ``hole_at``), the
    largest before a key frame (``key_hole``, ``key_hole_at``: where a Matroska demuxer resumes after damage, at the
    next cluster), in seconds; and the median spacing of consecutive packets (``spacing``)."""
    ordered = sorted(spans)
    best = {"hole": (0, 0), "key_hole": (0, 0)}
    for (pts, duration, _), (next_pts, _, key) in zip(ordered, ordered[1:]):
        gap = next_pts - (pts + duration)
        if duration <= 0 or gap <= 0:
            continue
        if gap > best["hole"][0]:
            best["hole"] = (gap, pts + duration)
        if key and gap > best["key_hole"][0]:
            best["key_hole"] = (gap, pts + duration)
    steps = sorted(b[0] - a[0] for a, b in zip(ordered, ordered[1:]))
    out = {"spacing": (steps[len(steps) // 2] if steps else 0) * time_base}
    for name, (gap, at) in best.items():
        out[name], out[f"{name}_at"] = gap * time_base, (at - start) * time_base
    return out


#: Demuxers FFmpeg picks for a single picture (a PNG / JPEG / WebP ... renamed .mp4); GIF is read as a video.
_IMAGE_FORMATS = ("image2", "image2pipe")
_ROTATION_REPORTED: set[str] = set()  # files whose rotation was logged in this process

FrameResize = Callable[[torch.Tensor], torch.Tensor]


def _still_image(container: av.container.InputContainer) -> str | None:
    """The picture format when the container is a still image (``png_pipe``, ``jpeg_pipe``, ``image2``, ...)."""
    name = container.format.name
    return name.removesuffix("_pipe") if name.endswith("_pipe") or name in _IMAGE_FORMATS else None


def _report_rotation(path: str, frame: av.VideoFrame) -> None:
    """Log, once per file and process, that the file asks for a rotation the frames are not given."""
    angle = int(getattr(frame, "rotation", 0) or 0)
    if angle and path not in _ROTATION_REPORTED:
        _ROTATION_REPORTED.add(path)
        logger.warning("%s: the file asks for a %d degree rotation on display; its frames are read as stored, not "
                       "rotated (as the official decord pipeline reads them)", path, angle)


def _frame_tensor(frame: av.VideoFrame, resize: FrameResize | None) -> torch.Tensor:
    """uint8 ``(3, h, w)``: RGB, resized right away when ``resize`` is given (a full-resolution frame is then never
    kept beyond its conversion)."""
    rgb = torch.from_numpy(_to_rgb(frame)).permute(2, 0, 1)  # (3, H, W) view
    if resize is None:
        return rgb
    return resize(rgb.unsqueeze(0))[0].contiguous()


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8. On one swscale thread: the converter stays attached to the frame, and a frame still alive
    when a DataLoader worker forks (e.g. held by a traceback) would hang the worker when freed there (a
    threaded converter waits for its threads, which a forked process does not have). Only the sampled frames
    are converted, so the threads gained little."""
    return frame.to_ndarray(format="rgb24", threads=1)


def _frame_nbytes(frame: av.VideoFrame) -> int:
    return sum(plane.buffer_size for plane in frame.planes)


def _scan(
    path: str,
    num_frames: int,
    sample: SampleType,
    hint_rng: random.Random | np.random.Generator | np.random.RandomState | None,
    *,
    trimmed30: bool,
    min_coverage: float,
    thread_type: str,
    thread_count: int,
    max_buffer_bytes: int,
    allow_images: bool = False,
    resize: FrameResize | None = None,
) -> _ScanResult:
    """Decode the whole stream once: count frames, convert the frames the indices computed from the
    container's claimed frame count point at (``hint_rng`` is consumed for that), look for damage."""
    container = _open(path)
    try:
        image = _still_image(container)
        if image is not None and not allow_images:
            raise VideoDecodeError(path, f"a still image ({image}), not a video (a DataModule reads images as one-frame "
                                         "videos with allow_images: true)")
        stream = _video_stream(container, path, thread_type, thread_count)
        fps = _stream_fps(stream)
        claimed = int(stream.frames or 0)
        estimated = claimed <= 0
        if estimated and fps > 0:  # e.g. Matroska / WebM: no frame count in the header
            claimed = int(round(_declared_duration_s(container, stream) * fps))
        wanted: set[int] = set()
        if claimed > 0:
            hint_vlen, _ = trim_to_30s(claimed, fps, trimmed30)
            wanted = set(get_frame_indices(num_frames, max(hint_vlen, 1), sample, rng=hint_rng))
        time_base = stream.time_base
        indexed, index_end, index_duration = _index_summary(stream, fps)  # before demuxing adds entries
        # Keeping every av.VideoFrame alive defeats FFmpeg's buffer pool (~25 % slower decoding), so the
        # buffer is only kept when the frame count is an estimate; a wrong header count -> second pass.
        buffer: list[av.VideoFrame] | None = [] if (estimated and max_buffer_bytes > 0) else None
        buffer_bytes = 0
        kept: dict[int, torch.Tensor] = {}
        n = 0
        n_packets = 0
        last_end: int | None = None
        flagged = 0
        damage: str | None = None
        stopped_early = False
        # Matroska / WebM: every track is demuxed (the end of the last one is what the segment duration declares) and
        # the video packets' (pts, duration) kept, to find holes where the demuxer resynchronised past damaged bytes
        matroska = "matroska" in container.format.name or "webm" in container.format.name
        spans: list[tuple[int, int, bool]] = []
        other_end = 0.0
        try:
            for packet in container.demux() if matroska else container.demux(stream):
                if packet.stream_index != stream.index:
                    if packet.pts is not None and packet.stream.time_base is not None:
                        start = packet.stream.start_time or 0
                        other_end = max(other_end, float((packet.pts + (packet.duration or 0) - start)
                                                         * packet.stream.time_base))
                    continue
                if packet.size:
                    n_packets += 1
                    if packet.is_corrupt:
                        flagged += 1
                    ts = packet.pts if packet.pts is not None else packet.dts
                    if ts is not None:
                        end = ts + (packet.duration or 0)
                        last_end = end if last_end is None else max(last_end, end)
                        if matroska:
                            spans.append((ts, packet.duration or 0, bool(packet.is_keyframe)))
                for frame in packet.decode():
                    if frame.is_corrupt:
                        flagged += 1
                    if n == 0:
                        _report_rotation(path, frame)
                    if n in wanted:
                        kept[n] = _frame_tensor(frame, resize)
                    if buffer is not None:
                        buffer_bytes += _frame_nbytes(frame)
                        if buffer_bytes > max_buffer_bytes:
                            buffer = None
                        else:
                            buffer.append(frame)
                    n += 1
                    if trimmed30 and fps > 0 and n / fps > 30:
                        stopped_early = True
                        break
                if stopped_early:
                    break
        except _FFMPEG_ERRORS as exc:
            damage = f"decoding failed after {n} frame(s) ({_ffmpeg_message(exc)})"

        if not stopped_early:  # also after an FFmpeg error: what the container says was lost, next to the error
            covered = None
            holes: dict[str, float] = {}
            if last_end is not None and time_base is not None:
                covered = float((last_end - (stream.start_time or 0)) * time_base)
                holes = _holes(spans, stream.start_time or 0, float(time_base))
            report = damage_report(
                StreamEvidence(
                    file_size=os.path.getsize(path),
                    header_frames=int(stream.frames or 0),
                    indexed_frames=indexed,
                    index_end=index_end,
                    index_duration=index_duration,
                    track_duration=_track_duration_s(stream),
                    container_duration=_container_duration_s(container),
                    fps=fps,
                    packets=n_packets,
                    decoded=n,
                    flagged=flagged,
                    covered=covered,
                    gif_trailer=has_gif_trailer(path) if container.format.name == "gif" else None,
                    all_tracks_end=max(covered or 0.0, other_end) if matroska and covered is not None else None,
                    **holes,
                ),
                min_coverage,
            )
            damage = "; ".join(part for part in (damage, report) if part) or None

        if fps <= 0 and n > 0:
            declared = _declared_duration_s(container, stream)
            fps = n / declared if declared > 0 else 0.0
        return _ScanResult(
            num_decoded=n, fps=fps, kept=kept, buffer=buffer, damage=damage, stopped_early=stopped_early
        )
    finally:
        container.close()


def _each_frame(path: str, thread_type: str, thread_count: int, failed: str) -> Iterator[av.VideoFrame]:
    """The frames of the first video stream in decoder output order (the container is closed when the iteration
    ends or is dropped); an FFmpeg error mid-stream raises VideoDecodeError "<failed> after <n> frame(s) (...)"."""
    container = _open(path)
    try:
        stream = _video_stream(container, path, thread_type, thread_count)
        n = 0
        try:
            for frame in container.decode(stream):
                yield frame
                n += 1
        except _FFMPEG_ERRORS as exc:
            raise VideoDecodeError(path, f"{failed} after {n} frame(s) ({_ffmpeg_message(exc)})") from exc
    finally:
        container.close()


def _fetch(
    path: str, needed: list[int], *, thread_type: str, thread_count: int, resize: FrameResize | None = None
) -> dict[int, torch.Tensor]:
    """Second pass: decode from the start up to ``max(needed)`` and convert the needed frames."""
    need = set(needed)
    last = max(need)
    out: dict[int, torch.Tensor] = {}
    n = 0
    for frame in _each_frame(path, thread_type, thread_count, "second decode pass failed"):
        if n in need:
            out[n] = _frame_tensor(frame, resize)
        n += 1
        if n > last:
            break
    missing = need - out.keys()
    if missing:
        raise VideoDecodeError(
            path, f"second decode pass produced only {n} frames; frames {sorted(missing)} missing (non-deterministic decoder?)"
        )
    return out


def decode_frames(
    path: str | os.PathLike[str],
    num_frames: int,
    sample: SampleType = "middle",
    *,
    trimmed30: bool = False,
    rng: RandomSource = None,
    on_corrupt: OnCorrupt = "error",
    min_coverage: float = 0.9,
    thread_type: str = "AUTO",
    thread_count: int = 0,
    max_buffer_bytes: int = 256 * 1024 * 1024,
    allow_images: bool = False,
    resize: FrameResize | None = None,
) -> VideoClip:
    """Decode ``num_frames`` frames of a video sampled with the official UMT rule.

    Args:
        path: video file (any container / codec FFmpeg reads).
        num_frames: ``T``.
        sample: ``"middle"`` (test) or ``"rand"`` (train); see :func:`get_frame_indices`.
        trimmed30: DiDeMo rule, only the first 30 s count when the video is longer.
        rng: random source for ``"rand"`` (see :func:`get_frame_indices`); advanced exactly as one
            ``get_frame_indices`` call on the true frame count.
        on_corrupt: ``"error"`` (default) raises :class:`VideoDecodeError` for a damaged file;
            ``"keep_decoded"`` samples from the frames that did decode (warning logged, reason in
            ``corrupt_reason``). Either way a damaged file is decoded again on one thread, so the frames and
            the counts in the message are the same on every call. See the module docstring for what counts as
            damage.
        min_coverage: truncation check when only the container declares a duration (it may include a
            longer audio track): the packets must reach this fraction of it. A duration the video track
            declares itself must be reached within a frame + 1 %. 0 disables both duration checks; frame
            counts against the index or header are compared exactly.
        thread_type / thread_count: PyAV decoder threading (``"AUTO"`` = frame + slice threads;
            ``thread_count=0`` lets FFmpeg pick, use 1-2 inside many DataLoader workers).
        max_buffer_bytes: memory cap for the decoded (YUV) frames kept when the container declares no
            frame count and the estimate may be wrong (0 disables; then a second decode pass is used).
        allow_images: read a still image (a PNG / JPEG ... even when named .mp4) as a one-frame video; by default
            it is refused. GIFs are videos.
        resize: ``resize(uint8 (1, 3, H, W)) -> uint8 (1, 3, h, w)`` applied to each sampled frame as soon as it is
            converted (the evaluation transforms' per-frame resize), so memory does not grow with the source
            resolution; ``frames`` then has the resized size.

    Returns:
        :class:`VideoClip` with ``frames`` uint8 ``(T, 3, H, W)``.

    Raises:
        VideoDecodeError: missing / empty / unreadable file, no video stream, no decodable frame, or
            (with ``on_corrupt="error"``) a damaged stream.
    """
    path = os.fspath(path)
    if on_corrupt not in ("error", "keep_decoded"):
        raise ValueError(f"on_corrupt must be 'error' or 'keep_decoded', got {on_corrupt!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not callable(sample) and sample not in ("rand", "middle"):
        raise ValueError(f"sample must be 'rand', 'middle' or an index rule, got {sample!r}")
    gen = _resolve_rng(rng) if callable(sample) or sample == "rand" else None

    def scan_with(threads: str, count: int) -> _ScanResult:
        return _scan(
            path,
            num_frames,
            sample,
            copy.deepcopy(gen),  # the hint must not consume the caller's generator
            trimmed30=trimmed30,
            min_coverage=min_coverage,
            thread_type=threads,
            thread_count=count,
            max_buffer_bytes=max_buffer_bytes,
            allow_images=allow_images,
            resize=resize,
        )

    scan = scan_with(thread_type, thread_count)
    if scan.damage is not None and thread_count != 1:
        # Frame threads conceal and drop damaged frames depending on thread timing (other frames, and other counts in
        # the message, on every call): decode a damaged file again on one thread, which is deterministic, and fetch
        # from that decode too (keep_decoded) or report what it found (error).
        threaded_damage = scan.damage
        thread_type, thread_count = "NONE", 1
        scan = scan_with(thread_type, thread_count)
        scan.damage = scan.damage or threaded_damage
    if scan.num_decoded == 0 or (scan.damage is not None and on_corrupt == "error"):
        scan.buffer = None  # no decoder frames in the traceback
    if scan.num_decoded == 0:
        detail = f" ({scan.damage})" if scan.damage else ""
        raise VideoDecodeError(path, f"no decodable video frames{detail}")
    if scan.damage is not None:
        if on_corrupt == "error":
            raise VideoDecodeError(
                path,
                f"damaged video, frame count cannot be trusted: {scan.damage}. {KEEP_DECODED_HINT}",
            )
        logger.warning(
            "Damaged video %s: %s; sampling from the %d frames that decoded", path, scan.damage, scan.num_decoded
        )

    if scan.stopped_early:  # trimmed30 and more than 30 s decoded: duration > 30 s for sure
        vlen, duration = int(30 * scan.fps), 30.0
    else:
        vlen, duration = trim_to_30s(scan.num_decoded, scan.fps, trimmed30)
    indices = get_frame_indices(num_frames, vlen, sample, rng=gen)

    unique = sorted(set(indices))
    converted = dict(scan.kept)
    scan.kept = {}
    missing = [i for i in unique if i not in converted]
    if missing and scan.buffer is not None and len(scan.buffer) == scan.num_decoded:
        for i in missing:
            converted[i] = _frame_tensor(scan.buffer[i], resize)
        missing = []
    scan.buffer = None  # release decoder frames
    if missing:
        converted.update(_fetch(path, missing, thread_type=thread_type, thread_count=thread_count, resize=resize))

    frames = torch.stack([converted[i] for i in indices])  # (T, 3, H, W), one copy
    return VideoClip(
        frames=frames,
        indices=tuple(indices),
        vlen=vlen,
        fps=scan.fps,
        duration=duration,
        path=path,
        num_decoded=scan.num_decoded,
        corrupt_reason=scan.damage,
    )


def count_frames(path: str | os.PathLike[str], *, thread_type: str = "AUTO", thread_count: int = 0) -> int:
    """Number of frames the decoder outputs for the first video stream (decodes everything; no damage checks).

    Raises:
        VideoDecodeError: the file cannot be opened / has no video stream / fails mid-stream.
    """
    return sum(1 for _ in _each_frame(os.fspath(path), thread_type, thread_count, "decoding failed"))


def load_clip_or_skip(
    path: str | os.PathLike[str],
    num_frames: int,
    sample: SampleType = "middle",
    *,
    skip_errors: bool = False,
    skip_log: str | None = None,
    **kwargs,
) -> VideoClip | None:
    """:func:`decode_frames` with a skip policy.

    With ``skip_errors=False`` (default) a :class:`VideoDecodeError` propagates, its reason ending in a hint at
    ``skip_errors``. With ``skip_errors=True`` a warning naming the file and the reason is logged (logger
    ``vidtldr_pl.data_modules.video``), the file is appended to ``skip_log`` when given (see
    :mod:`vidtldr_pl.data_modules.skips`) and ``None`` is returned so that a dataset can drop the sample. Other
    exceptions (bad arguments, bugs) always propagate. ``kwargs`` go to :func:`decode_frames`.
    """
    try:
        return decode_frames(path, num_frames, sample, **kwargs)
    except VideoDecodeError as err:
        if not skip_errors:
            raise VideoDecodeError(err.path, f"{err.reason} {SKIP_HINT}") from err
        logger.warning("Skipping unreadable video %s: %s", err.path, err.reason)
        if skip_log is not None:
            from .skips import record_skip

            record_skip(skip_log, err.path, err.reason)
        return None


@dataclass
class VideoDecoder:
    """Picklable decoding policy for datasets (holds no file handles).

    ``decoder(path, rng)`` returns a :class:`VideoClip` (``frames`` uint8 ``(T, 3, H, W)``), or ``None`` when
    ``skip_errors`` is set and the file is unreadable.
    """

    num_frames: int = 12
    sample: SampleType = "middle"
    trimmed30: bool = False
    on_corrupt: OnCorrupt = "error"
    skip_errors: bool = False
    min_coverage: float = 0.9
    thread_type: str = "AUTO"
    thread_count: int = 0
    skip_log: str | None = None  # a file skipped videos are appended to (vidtldr_pl.data_modules.skips)
    allow_images: bool = False
    resize: FrameResize | None = None  # per-frame resize at decode time (picklable: functools.partial of a function)

    def __call__(self, path: str | os.PathLike[str], rng: RandomSource = None) -> VideoClip | None:
        return load_clip_or_skip(
            path,
            self.num_frames,
            self.sample,
            skip_errors=self.skip_errors,
            skip_log=self.skip_log,
            trimmed30=self.trimmed30,
            rng=rng,
            on_corrupt=self.on_corrupt,
            min_coverage=self.min_coverage,
            thread_type=self.thread_type,
            thread_count=self.thread_count,
            allow_images=self.allow_images,
            resize=self.resize,
        )
