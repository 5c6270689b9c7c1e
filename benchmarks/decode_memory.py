"""Peak memory of decoding one large clip through an evaluation DataModule (issue 22.7).

    python benchmarks/decode_memory.py [--work DIR]

Generates, with PyAV, a 4K clip (3840 x 2160, 24 frames, mpeg4) and a one-frame 2965 x 5264 GIF, then for each
runs a fresh process that builds the retrieval DataModule's evaluation dataset (12 frames, 224 px test transform) and
the classification DataModule's (16 frames, short side 224, 1 view), loads the clip once and prints the process's
peak RSS (``ru_maxrss``) and the RSS before the load. The numbers depend on the machine's allocator and FFmpeg's
threads; compare the two trees on one machine (run it with ``PYTHONPATH`` at an older checkout for "before").
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

CHILD = r"""
import json, resource, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from vidtldr_pl.data_modules.retrieval import VideoTextRetrievalDataModule
from vidtldr_pl.data_modules.classification import VideoClassificationDataModule
kind, video, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if kind == "retrieval":
    (work / "ann.json").write_text(json.dumps([{"video": video.name, "caption": "x"}]))
    dm = VideoTextRetrievalDataModule(test_annotation=str(work / "ann.json"), video_root=str(video.parent),
                                      num_frames=12, img_size=224, num_workers=0)
    dataset = dm._eval_loader("test").dataset
else:
    (work / "list.txt").write_text(f"{video.name} 0\n")
    dm = VideoClassificationDataModule(test=str(work / "list.txt"), video_root=str(video.parent), num_classes=1,
                                       num_frames=16, sampling_rate=1, test_clips=1, test_crops=1, img_size=224,
                                       num_workers=0)
    dataset = dm.dataset("test")
import gc; gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
item = dataset[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024, "shape": list(item["video"].shape)}))
"""


def write_4k(path: Path, frames: int = 24) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (2160 // 8, 3840 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 3840, 2160, "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, 16 * i, axis=1), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: Path, width: int = 2965, height: int = 5264) -> Path:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    image = np.ascontiguousarray(image[:height, :width])
    with av.open(str(path), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb8"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="folder for the generated clips (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="decode_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    clips = {"4K mpeg4 (24 frames)": work / "clip_4k.mp4", "GIF 2965x5264 (1 frame)": work / "big.gif"}
    if not clips["4K mpeg4 (24 frames)"].exists():
        write_4k(clips["4K mpeg4 (24 frames)"])
    if not clips["GIF 2965x5264 (1 frame)"].exists():
        write_gif(clips["GIF 2965x5264 (1 frame)"])
    for name, path in clips.items():
        for kind in ("retrieval", "classification"):
            out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(work)], capture_output=True,
                                 text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {kind} | {result['before_mb']:.0f} | {result['peak_mb']:.0f} | "
                  f"{result['peak_mb'] - result['before_mb']:.0f} |")


if __name__ == "__main__":
    main()
