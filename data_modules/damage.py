"""Is a decoded video stream damaged or truncated? The verdict on the evidence one decode pass collected.

Which evidence is trusted (measured on ``shared/reference/videos`` and truncated copies of them):

- FFmpeg errors, packets / frames flagged corrupt, fewer frames out than packets in (frames lost).
- **The container index** (MP4 ``moov`` sample table, AVI ``idx1``), read when the file is opened: it lists the
  frames that were written. Bytes it points at beyond the end of the file, or fewer packets read than it lists,
  mean a truncated file. It is trusted over the stream header: ``tree.avi``'s header declares 444 frames, its
  index lists the 68 stored ones (spread over the 444 frame slots), and 68 decode.
- **The stream header's frame count** (AVI ``strh``), unless the index's timestamps reach the end of the
  declared frames (``tree.avi``: they do). A truncated AVI loses ``idx1``, which is written last; what FFmpeg
  indexes while probing it covers only the first frames.
- **The declared duration** against the span of the packets' timestamps: catches a truncated Matroska / WebM,
  whose duration is written in the header. The video track's own duration (stream header, Matroska per-track
  ``DURATION`` tag) ends with its last frame (exact on every reference and synthetic clip), so the packets must
  reach it within ``TRACK_SLACK_FRAMES`` frames + ``TRACK_SLACK_FRACTION``; the container's duration may include
  a longer audio track, so there they must only reach ``min_coverage`` of it.
- **Matroska / WebM**: the segment's duration is the end of its longest track, written by the muxer, so the end of
  all tracks' packets (audio included) must reach it within the same slack as a track duration (a WebM cut to 95 %
  has no per-track ``DURATION`` tag when the muxer writes the tags at the end, and ``min_coverage`` would pass it).
  Where packets carry durations (a default frame duration, as every constant-rate Matroska file has), the next
  packet must start where the previous one ended: a damaged cluster makes the demuxer resynchronise further on and
  silently drop the frames between (a byte-flipped WebM: 23 of 557 frames, a 1.6 s hole). Variable-frame-rate
  files carry a nominal frame duration with frames further apart, so a gap is damage when it spans more than
  ``HOLE_MIN_SPACINGS`` typical frame spacings and either ends at a key frame (the demuxer resumes at the next
  cluster, which starts with one) or is longer than ``HOLE_MIN_S``.
- **GIF**: no index, no declared count or duration (FFmpeg derives both by scanning the same, possibly cut,
  file): the file must end with a block terminator and the mandatory trailer, ``00 3B``.

Not trusted: the bit rate. Without an index, FFmpeg derives an AVI's duration from the file size and the
header's bit rate, so a cut file declares a proportionally shorter duration (half of ``Megamind_bugy.avi``
declares 4.5 s of its 9 s) and the duration check alone accepts many cuts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["StreamEvidence", "damage_report", "has_gif_trailer"]

TRACK_SLACK_FRAMES = 1  # a last packet without a duration ends one frame early
TRACK_SLACK_FRACTION = 0.01
HOLE_MIN_S = 0.5  # shorter gaps are variable frame rate (a nominal default duration, frames further apart) ...
HOLE_MIN_SPACINGS = 4  # ... as are gaps of a few typical frame spacings
GIF_END = b"\x00\x3b"  # the last block's terminator, then the trailer


@dataclass(frozen=True)
class StreamEvidence:
    """What one decode pass of a video stream saw.

    Attributes:
        file_size: bytes on disk.
        header_frames: frame count the stream header declares (0: none declared).
        indexed_frames: non-empty packets the container index listed when the file was opened (0: no index).
        index_end: last byte the index points at (``pos + size``; -1 without an index).
        index_duration: seconds from the stream start to the end of the last indexed frame (0.0: no index).
        track_duration: seconds the file declares for the video track itself (0.0: none declared).
        container_duration: seconds the container declares (all tracks; 0.0: unknown).
        fps: the stream's frame rate (0.0: unknown).
        packets: non-empty packets demuxed.
        decoded: frames the decoder output.
        flagged: packets / frames FFmpeg flagged as corrupt.
        covered: seconds spanned by the packets' timestamps (None: no timestamps).
        gif_trailer: whether a GIF ends with its trailer (None for other formats).
        all_tracks_end: seconds spanned by the packets of all tracks (Matroska / WebM only; None otherwise).
        hole: seconds of the largest gap between one video packet's end and the next packet (0.0: none seen).
        hole_at: where that gap starts, in seconds.
        key_hole / key_hole_at: the same for the largest gap that ends at a key frame.
        spacing: the median spacing of consecutive video packets, in seconds (0.0: not measured).
    """

    file_size: int
    header_frames: int
    indexed_frames: int
    index_end: int
    index_duration: float
    track_duration: float
    container_duration: float
    fps: float
    packets: int
    decoded: int
    flagged: int
    covered: float | None
    gif_trailer: bool | None = None
    all_tracks_end: float | None = None
    hole: float = 0.0
    hole_at: float = 0.0
    key_hole: float = 0.0
    key_hole_at: float = 0.0
    spacing: float = 0.0


def damage_report(ev: StreamEvidence, min_coverage: float) -> str | None:
    """``None`` for an intact stream, else the problems found, ``"; "``-joined, each stating expected vs found.

    ``min_coverage``: the packets' timestamps must span this fraction of the container's duration when the track
    declares none (0 disables both duration checks; frame counts and byte positions are compared exactly).
    """
    problems = []
    if ev.flagged:
        problems.append(f"FFmpeg flagged {ev.flagged} packet(s)/frame(s) as corrupt")
    if ev.decoded < ev.packets:
        lost = ev.packets - ev.decoded
        problems.append(f"the decoder output {ev.decoded} frames from {ev.packets} packets ({lost} lost)")
    if ev.index_end > ev.file_size:
        problems.append(
            f"the container index points at byte {ev.index_end} but the file has {ev.file_size} bytes (truncated file)"
        )
    if ev.indexed_frames > ev.packets:
        problems.append(
            f"the container index lists {ev.indexed_frames} frames but only {ev.packets} could be read "
            "(truncated file?)"
        )
    elif ev.header_frames > ev.packets and ev.fps > 0:
        indexed_slots = ev.index_duration * ev.fps  # frame slots the index covers (tree.avi: all 444, 68 stored)
        if indexed_slots < ev.header_frames - TRACK_SLACK_FRAMES:
            problems.append(
                f"the stream header declares {ev.header_frames} frames but only {ev.packets} could be read and no "
                "index covers the rest (truncated file?)"
            )
    if min_coverage > 0 and ev.covered is not None:
        if ev.track_duration > 0:
            frame = 1.0 / ev.fps if ev.fps > 0 else 0.0
            slack = TRACK_SLACK_FRAMES * frame + TRACK_SLACK_FRACTION * ev.track_duration
            if ev.covered < ev.track_duration - slack:
                problems.append(
                    f"the video track ends at {ev.covered:.2f} s but declares {ev.track_duration:.2f} s "
                    "(truncated file?)"
                )
        elif ev.all_tracks_end is not None and ev.container_duration > 0:  # Matroska / WebM: the segment duration
            frame = 1.0 / ev.fps if ev.fps > 0 else 0.0
            slack = TRACK_SLACK_FRAMES * frame + TRACK_SLACK_FRACTION * ev.container_duration
            if ev.all_tracks_end < ev.container_duration - slack:
                problems.append(
                    f"the tracks end at {ev.all_tracks_end:.2f} s but the container declares "
                    f"{ev.container_duration:.2f} s (truncated file?)"
                )
        elif ev.container_duration > 0 and ev.covered < min_coverage * ev.container_duration:
            problems.append(
                f"the video track ends at {ev.covered:.2f} s but the container declares {ev.container_duration:.2f} s "
                "(truncated file?)"
            )
    hole = None
    if ev.hole > HOLE_MIN_S and ev.hole > HOLE_MIN_SPACINGS * ev.spacing:
        hole = (ev.hole, ev.hole_at)
    elif ev.key_hole > HOLE_MIN_SPACINGS * ev.spacing > 0:
        hole = (ev.key_hole, ev.key_hole_at)
    if hole is not None:
        problems.append(
            f"the packet timeline has a hole of {hole[0]:.2f} s at {hole[1]:.2f} s (frames lost where the demuxer "
            "skipped damaged data)"
        )
    if ev.gif_trailer is False:
        problems.append(f"the GIF does not end with its trailer (00 3B) after {ev.packets} frames (truncated file)")
    return "; ".join(problems) if problems else None


def has_gif_trailer(path: str | os.PathLike[str]) -> bool:
    """Whether the file ends, ignoring trailing NUL / newline padding, with a block terminator and the GIF trailer."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 64))
        tail = f.read().rstrip(b"\x00\r\n")
    return tail.endswith(GIF_END)
