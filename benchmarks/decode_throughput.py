"""Single-worker video decoding throughput: decode ``num_frames`` frames ("middle" sampling, as evaluation)
with :func:`vidtldr_pl.data_modules.video.decode_frames` and apply the official test transform (bicubic resize to
224 x 224, /255, ImageNet normalize).

One process, torch limited to 1 thread (what a DataLoader worker runs with); the FFmpeg decoder is measured
with 1 thread and with FFmpeg's automatic thread count (``thread_type="AUTO"``). Each cell is the median of
``--repeats`` timed runs after one warm-up run.

Usage::

    python benchmarks/decode_throughput.py                      # print the table
    python benchmarks/decode_throughput.py --write BENCHMARKS.md  # also (re)write the section there
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.data_modules.transforms import VideoTestTransform  # noqa: E402
from vidtldr_pl.data_modules.video import decode_frames  # noqa: E402

SECTION = "## Video decoding throughput"
# the real clips the tests use (tests/reference_data.py: in the repository, or VIDTLDR_REFERENCE)
REF_VIDEOS = Path(os.environ.get("VIDTLDR_REFERENCE") or ROOT / "tests" / "data" / "reference") / "videos"
SAMPLES = ["bikes.mp4", "carphone_distorted.mp4", "tree.avi", "Megamind_bugy.avi"]


def make_synthetic_clip(path: Path, seconds: int = 10, fps: int = 25, width: int = 640, height: int = 360) -> Path:
    """A 10 s 640x360 H.264 (libx264 defaults, yuv420p) clip with moving content and mild noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            t = i / fps
            r = 127 + 100 * np.sin(xx / 40 + 2 * t)
            g = 127 + 100 * np.sin(yy / 30 - 1.5 * t)
            b = 127 + 100 * np.sin((xx + yy) / 50 + t)
            img = np.stack([r, g, b], axis=-1)
            cx, cy = int((0.5 + 0.4 * np.sin(t)) * width), int((0.5 + 0.4 * np.cos(0.7 * t)) * height)
            img[max(cy - 40, 0) : cy + 40, max(cx - 40, 0) : cx + 40] = (255, 255, 255)
            img += rng.normal(0, 6, img.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def describe(path: Path) -> str:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return f"{s.codec_context.name} {s.width}x{s.height}"


def measure(path: Path, num_frames: int, transform: VideoTestTransform, thread_count: int, repeats: int) -> tuple[float, float, int]:
    """Median seconds per clip (decode + transform), median decode-only seconds, decoded frame count."""
    totals, decodes = [], []
    vlen = 0
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        clip = decode_frames(path, num_frames, "middle", thread_count=thread_count)
        t1 = time.perf_counter()
        out = transform(clip.frames)
        t2 = time.perf_counter()
        assert out.shape == (num_frames, 3, *transform.size)
        vlen = clip.vlen
        if k:  # first run is warm-up
            totals.append(t2 - t0)
            decodes.append(t1 - t0)
    return statistics.median(totals), statistics.median(decodes), vlen


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(md_path: Path, body: str) -> None:
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    block = f"{SECTION}\n\n{body.rstrip()}\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt == -1 else nxt + 1
        text = text[:start] + block + ("\n" + text[end:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + block
    md_path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", type=Path, default=None, help="update the section in this Markdown file")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # as inside a DataLoader worker
    transform = VideoTestTransform(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = [REF_VIDEOS / name for name in SAMPLES]
        videos.append(make_synthetic_clip(Path(tmp) / "synthetic_10s_640x360_h264.mp4"))
        for path in videos:
            total1, dec1, vlen = measure(path, args.num_frames, transform, 1, args.repeats)
            total0, dec0, _ = measure(path, args.num_frames, transform, 0, args.repeats)
            rows.append((path.name, describe(path), vlen, 1 / total1, dec1 * 1e3, (total1 - dec1) * 1e3, 1 / total0))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.num_frames} frames, middle sampling, test transform to {args.size} px, 1 process")
    for col in ("video", "codec / size", "frames", "clips/s (dec 1 thr)", "decode ms", "transform ms", "clips/s (dec auto thr)"):
        table.add_column(col, justify="right" if col != "video" else "left")
    for name, desc, vlen, cps1, dms, tms, cps0 in rows:
        table.add_row(name, desc, str(vlen), f"{cps1:.1f}", f"{dms:.1f}", f"{tms:.1f}", f"{cps0:.1f}")
    Console(width=140).print(table)

    if args.write is not None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        command = "python benchmarks/decode_throughput.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        lines = [
            f"Measured {_dt.date.today().isoformat()} on {cpu_model()}, {cores} cores available "
            f"(Python {platform.python_version()}, torch {torch.__version__}, PyAV {av.__version__}, "
            f"libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}).",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"One process decodes {args.num_frames} frames per clip (`decode_frames(..., \"middle\")`: the whole "
            "stream is decoded to count frames, only the sampled frames are converted to RGB) and applies "
            f"`VideoTestTransform({args.size})` (bicubic resize without antialiasing, /255, normalize). torch uses "
            "1 thread, as in a DataLoader worker. \"dec 1 thr\": FFmpeg decoder with `thread_count=1`; "
            "\"dec auto thr\": `thread_type=\"AUTO\"`, `thread_count=0` (FFmpeg picks, up to the core count). "
            f"Median of {args.repeats} runs after one warm-up; decode / transform ms are for the 1-thread decoder.",
            "",
            "| video | codec / size | frames | clips/s (dec 1 thr) | decode ms | transform ms | clips/s (dec auto thr) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, desc, vlen, cps1, dms, tms, cps0 in rows:
            lines.append(f"| {name} | {desc} | {vlen} | {cps1:.1f} | {dms:.1f} | {tms:.1f} | {cps0:.1f} |")
        lines += [
            "",
            "Decoding every frame dominates for long / high-resolution clips (the frame count must come from "
            "decoding, container counts are not trusted); throughput scales with the number of DataLoader workers. "
            "On a machine with few cores FFmpeg's own threads cannot add much, and runs on shared VMs vary by "
            "roughly 10-20 %.",
        ]
        write_section(args.write, "\n".join(lines))
        print(f"updated {args.write}")


if __name__ == "__main__":
    main()
