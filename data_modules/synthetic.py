"""A synthetic video-text retrieval benchmark generated from a seed: named foreground objects (shape, colour, size,
direction of motion) over textured, drifting backgrounds with unnamed distractors, and captions from a grammar.

The question vid-TLDR answers is visible by construction: captions name only the foreground objects, which are a
small part of each frame, while the background and the distractors fill most tokens. Clips are written as real
mp4 files (mpeg4, PyAV) with UMT-format annotation JSON, so the evaluation runs the real decoding path.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from vidtldr_pl.progress import track

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245), "cyan": (40, 210, 220),
}
SIZES = {"small": 0.11, "large": 0.2}
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
VERBS = ("moves", "slides", "goes", "travels")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ClipConfig:
    """seed: everything derives from it. frames / size / fps of the written clips."""

    seed: int = 0
    frames: int = 16
    size: int = 128
    fps: int = 8


@dataclass(frozen=True)
class SyntheticConfig(ClipConfig):
    """As ClipConfig; max_objects named per clip; distractors: grey discs."""

    max_objects: int = 2
    distractors: int = 3


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    motion: str
    start: tuple[float, float]


def shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean (H, W) mask of ``shape`` centred at (cy, cx) px with radius r px. yy, xx: (H, W) pixel coordinates."""
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "ring":
        d = dy**2 + dx**2
        return (d <= r**2) & (d >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "cross":
        return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {shape!r}")


def sample_clip(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[list[ObjectSpec], str]:
    """Objects of one clip (distinct shape-colour pairs) and its caption."""
    n = int(rng.integers(1, cfg.max_objects + 1))
    shapes = rng.choice(len(SHAPES), n, replace=False)
    colours = rng.choice(len(COLOURS), n, replace=False)
    objects = []
    for s, c in zip(shapes, colours):
        motion = list(MOTIONS)[int(rng.integers(len(MOTIONS)))]
        dx, dy = MOTIONS[motion]
        # start on the side the object moves away from (so it crosses the frame), anywhere across the other axis
        along, across = 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.2, 0.8)
        start = (along - 0.3 * dy, across) if dy else (across, along - 0.3 * dx)
        objects.append(ObjectSpec(SHAPES[s], list(COLOURS)[c], list(SIZES)[int(rng.integers(2))], motion, start))
    parts = [f"a {o.size} {o.colour} {o.shape} {VERBS[int(rng.integers(len(VERBS)))]} {o.motion}" for o in objects]
    return objects, " and ".join(parts)


@dataclass(frozen=True)
class Scene:
    """What surrounds the named objects: a drifting sin-cos texture with noise and grey distractor discs.

    ``Scene.sample(rng, size, distractors, drift)`` draws it; ``scene.frame(f, *scene.grid())`` is frame f as float32
    (size, size, 3) before the foreground is painted (values may leave 0-255: clip after painting)."""

    size: int
    base: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    drift: np.ndarray
    noise: np.ndarray
    distractors: tuple[tuple[np.ndarray, np.ndarray, float, float], ...]

    @classmethod
    def sample(cls, rng: np.random.Generator, size: int, distractors: int, drift: float = 2.0) -> Scene:
        """drift: the texture moves up to this many px per frame along each axis (0: a still background)."""
        s = size
        base = rng.uniform(40, 150, 3)
        freq = rng.uniform(0.05, 0.3, 2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        drift = rng.uniform(-drift, drift, 2)
        noise = rng.normal(0, 12, (s, s, 3)).astype(np.float32)
        dist = tuple((rng.uniform(0, s, 2), rng.normal(0, 1.5, 2), rng.uniform(0.03, 0.07) * s, rng.uniform(90, 170))
                     for _ in range(distractors))
        return cls(s, base, freq, phase, drift, noise, dist)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(yy, xx): pixel coordinates, each (size, size) float32."""
        yy, xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)
        return yy, xx

    def frame(self, f: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        (fy, fx), drift, s = self.freq, self.drift, self.size
        wave = np.sin(fy * (yy + drift[1] * f) + self.phase[0]) * np.cos(fx * (xx + drift[0] * f) + self.phase[1])
        frame = self.base + 35 * wave[..., None] + np.roll(self.noise, (int(drift[1] * f), int(drift[0] * f)), axis=(0, 1))
        for pos, vel, radius, grey in self.distractors:
            cy, cx = pos + vel * f
            frame[shape_mask("circle", yy, xx, cy % s, cx % s, radius)] = grey
        return frame

    def render(self, frames: int, paint: Callable[[np.ndarray, int, np.ndarray, np.ndarray], None]) -> np.ndarray:
        """(frames, size, size, 3) uint8: each frame f of the scene, ``paint(frame, f, yy, xx)`` drawing the
        foreground on it in place, then clipped to 0-255."""
        yy, xx = self.grid()
        video = np.empty((frames, self.size, self.size, 3), dtype=np.uint8)
        for f in range(frames):
            frame = self.frame(f, yy, xx)
            paint(frame, f, yy, xx)
            video[f] = np.clip(frame, 0, 255).astype(np.uint8)
        return video


def render_clip(rng: np.random.Generator, objects: list[ObjectSpec], cfg: SyntheticConfig) -> np.ndarray:
    """(frames, size, size, 3) uint8: drifting textured background, grey distractors, then the named objects."""
    s, t = cfg.size, cfg.frames

    def paint(frame: np.ndarray, f: int, yy: np.ndarray, xx: np.ndarray) -> None:
        for o in objects:
            dx, dy = MOTIONS[o.motion]
            travel = 0.6 * f / max(t - 1, 1)
            cy, cx = (o.start[0] + dy * travel) * s, (o.start[1] + dx * travel) * s
            frame[shape_mask(o.shape, yy, xx, cy, cx, SIZES[o.size] * s)] = COLOURS[o.colour]

    return Scene.sample(rng, s, cfg.distractors).render(t, paint)


def write_mp4(path: Path, video: np.ndarray, fps: int) -> None:
    """Deterministic mpeg4 (single-threaded, fixed quality) so the same frames give the same bytes."""
    with av.open(str(path), "w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        stream.codec_context.options = {"qscale": "3", "flags": "+bitexact"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_new_clip(path: Path, render: Callable[[], np.ndarray], fps: int) -> None:
    """Write ``render()`` (T, H, W, 3) uint8 to ``path`` unless it exists. Written to a temporary name and renamed,
    so a present file is complete (DDP ranks may write together)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.mp4")
    write_mp4(tmp, render(), fps)
    os.replace(tmp, path)


def write_json(path: Path, value: object) -> None:
    """Atomic JSON write (temporary name, then rename)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=0))
    os.replace(tmp, path)


def write_split(root: str | Path, split: str, num_videos: int, fps: int, what: str,
                clip: Callable[[int], tuple[Callable[[], np.ndarray], dict]], ann_name: str | None = None) -> Path:
    """Write <root>/videos/<split>_<i>.mp4 for i < num_videos and the annotation <root>/anno/<ann_name or
    split.json>: a JSON list of ``{"video": <file name>, **entry}``, where ``clip(i) -> (render, entry)`` and
    ``render() -> (T, H, W, 3) uint8`` is called only for a clip not on disk yet. ``what`` names the progress line."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "anno").mkdir(exist_ok=True)
    entries = []
    for i in track(range(num_videos), f"generating {what} {split} split", unit="clips"):
        name = f"{split}_{i:05d}.mp4"
        render, entry = clip(i)
        write_new_clip(root / "videos" / name, render, fps)
        entries.append({"video": name, **entry})
    ann = root / "anno" / (ann_name or f"{split}.json")
    write_json(ann, entries)
    return ann


def generate_split(root: str | Path, split: str, num_videos: int, cfg: SyntheticConfig, ann_name: str | None = None) -> Path:
    """Write <root>/videos/<split>_<i>.mp4 and <root>/anno/<split>.json (UMT format); returns the JSON path.

    Clip i of a split depends only on (seed, split, i): clips already on disk are kept (files are written to a
    temporary name and renamed, so a present file is complete), and a larger split extends a smaller one.
    """
    def clip(i: int) -> tuple[Callable[[], np.ndarray], dict]:
        rng = np.random.default_rng([cfg.seed, SPLITS[split], i])
        objects, caption = sample_clip(rng, cfg)
        return lambda: render_clip(rng, objects, cfg), {"caption": caption, "objects": [asdict(o) for o in objects]}

    return write_split(root, split, num_videos, cfg.fps, "synthetic", clip, ann_name)


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce, plus BERT's special tokens first ([PAD] = 0)."""
    words = {"a", "and", *SHAPES, *COLOURS, *SIZES, *MOTIONS, *VERBS}
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]


def ensure_dataset(root: str | Path, cfg: SyntheticConfig, sizes: dict[str, int]) -> Path:
    """Generate (once) the splits of sizes {split: num_videos} with n > 0, and a tokenizer/vocab.txt, under
    root/<config key>/; annotations are anno/<split>_<n>.json. Only the splits asked for are written (an
    evaluation of the test split does not generate the training set). Returns the dataset folder."""
    key = f"seed{cfg.seed}_f{cfg.frames}_s{cfg.size}_o{cfg.max_objects}_d{cfg.distractors}"
    out = Path(root) / key
    for split, n in sizes.items():
        if n > 0 and not (out / "anno" / f"{split}_{n}.json").exists():
            generate_split(out, split, n, cfg, ann_name=f"{split}_{n}.json")
    vocab = out / "tokenizer" / "vocab.txt"
    if not vocab.exists():
        vocab.parent.mkdir(parents=True, exist_ok=True)
        vocab.write_text("\n".join(vocabulary()) + "\n")
    (out / "config.json").write_text(json.dumps(asdict(cfg)))
    return out
