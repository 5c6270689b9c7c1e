"""The action-recognition version of the synthetic benchmark: one coloured actor per clip, and its class is what it
is and where it goes: 3 shapes x 4 directions = 12 classes ("circle moving left", ...), over the textured background
(still by default) and wandering grey distractors of ``vidtldr_pl.data_modules.synthetic``; ``SyntheticActionDataModule`` generates it on first
use and serves it as a classification DataModule.

A person tells the classes apart at a glance, but a model must look at the actor: it covers about 2-13 % of the
frame, and its colour and size are drawn independently of the class, so most tokens carry nothing about the label
(the situation vid-TLDR exploits), and telling left from right needs more than one frame. The actor crosses the frame
exactly as the retrieval benchmark's objects do. Clip i of a split has class ``i % 12`` (balanced splits) and
depends only on (seed, split, i). Clips are real mp4 files written through PyAV.

The generation and the DataModule take a ``ClassKind``: what a class fixes of the actor and what is drawn. The
action kind is this module's; ``vidtldr_pl.data_modules.synthetic_objects`` labels the same scenes by colour and
shape instead.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .classification import VideoClassificationDataModule
from .generated import GeneratedOnFirstUse
from .synthetic import COLOURS, MOTIONS, SIZES, SPLITS, ClipConfig, Scene, shape_mask, write_json, write_split

ACTION_SHAPES = ("circle", "square", "triangle")
# class names, in label order
ACTIONS = tuple(f"{shape} moving {motion}" for shape in ACTION_SHAPES for motion in MOTIONS)
STREAM = 1  # separates the action set's random streams from the retrieval set's (same seed, other clips)


@dataclass(frozen=True)
class ActionConfig(ClipConfig):
    """As ClipConfig (seed, frames / size / fps of the written clips); distractors: grey discs (they wander);
    background_drift: px per frame the texture may move (0: still, so what moves is the actor and the distractors)."""

    distractors: int = 3
    background_drift: float = 0.0


@dataclass(frozen=True)
class Actor:
    """The labelled foreground object. centre: (y, x) at mid-clip, as fractions of the frame."""

    shape: str
    motion: str
    colour: str
    size: str
    centre: tuple[float, float]

    @property
    def action(self) -> str:
        return f"{self.shape} moving {self.motion}"

    @property
    def label(self) -> int:
        return ACTIONS.index(self.action)

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.action}"

    def position(self, u: float) -> tuple[float, float]:
        """(y, x) centre as frame fractions at clip time u in [0, 1]: 0.6 of the frame crossed, as in the retrieval
        benchmark."""
        dx, dy = MOTIONS[self.motion]
        y, x = self.centre
        return y + dy * 0.6 * (u - 0.5), x + dx * 0.6 * (u - 0.5)


def place_actor(rng: np.random.Generator, shape: str, motion: str | None = None, colour: str | None = None) -> Actor:
    """An actor of ``shape``; drawn from ``rng``, in this order: the ``motion`` and ``colour`` not given, its size,
    and its path (it crosses the frame through its middle, anywhere across it)."""
    motion = motion or list(MOTIONS)[int(rng.integers(len(MOTIONS)))]
    colour = colour or list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    dx, dy = MOTIONS[motion]
    along, across = 0.5 + rng.uniform(-0.05, 0.05), rng.uniform(0.2, 0.8)
    centre = (along, across) if dy else (across, along)
    return Actor(shape, motion, colour, size, (float(centre[0]), float(centre[1])))


def sample_actor(rng: np.random.Generator, action: str) -> Actor:
    """An actor of class ``action`` ("<shape> moving <direction>"): colour, size and path drawn from ``rng``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; choose one of {list(ACTIONS)}")
    shape, motion = action.split(" moving ")
    return place_actor(rng, shape, motion=motion)


@dataclass(frozen=True)
class ClassKind:
    """How a benchmark of these scenes labels its clips. name: in the progress line ("synthetic <name> test
    split"); key: the cache folder's prefix; classes: the class names in label order; sample(rng, class name) ->
    the actor of a clip of that class; stream: separates its random streams from the other kinds' (same seed,
    other clips); flip_changes_label: a horizontal flip turns a clip of one class into another."""

    name: str
    key: str
    classes: tuple[str, ...]
    sample: Callable[[np.random.Generator, str], Actor]
    stream: int
    flip_changes_label: bool


ACTION_KIND = ClassKind("action", "actions", ACTIONS, sample_actor, STREAM, flip_changes_label=True)


def render_action_clip(rng: np.random.Generator, actor: Actor, cfg: ActionConfig) -> np.ndarray:
    """(frames, size, size, 3) uint8: the synthetic scene, then the actor at its place in each frame."""
    s, t = cfg.size, cfg.frames

    def paint(frame: np.ndarray, f: int, yy: np.ndarray, xx: np.ndarray) -> None:
        cy, cx = actor.position(f / max(t - 1, 1))
        frame[shape_mask(actor.shape, yy, xx, cy * s, cx * s, SIZES[actor.size] * s)] = COLOURS[actor.colour]

    return Scene.sample(rng, s, cfg.distractors, cfg.background_drift).render(t, paint)


def clip_rng(cfg: ActionConfig, split: str, index: int, stream: int = STREAM) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS[split], index, stream])


def generate_action_split(root: str | Path, split: str, num_videos: int, cfg: ActionConfig,
                          ann_name: str | None = None, kind: ClassKind = ACTION_KIND) -> Path:
    """Write <root>/videos/<split>_<i>.mp4 and the annotation <root>/anno/<ann_name or split.json>: a JSON list of
    {"video", "label", "label_name", "caption", "actor"}; returns its path. Clip i has class i % len(kind.classes)
    and depends only on (seed, split, i, kind): clips on disk are kept, a larger split extends a smaller one."""
    def clip(i: int) -> tuple[Callable[[], np.ndarray], dict]:
        rng = clip_rng(cfg, split, i, kind.stream)
        label = i % len(kind.classes)
        actor = kind.sample(rng, kind.classes[label])
        return lambda: render_action_clip(rng, actor, cfg), {"label": label, "label_name": kind.classes[label],
                                                              "caption": actor.caption, "actor": asdict(actor)}

    return write_split(root, split, num_videos, cfg.fps, f"synthetic {kind.name}", clip, ann_name)


def ensure_action_dataset(root: str | Path, cfg: ActionConfig, sizes: dict[str, int],
                          kind: ClassKind = ACTION_KIND) -> Path:
    """Generate (once) the splits {split: num_videos} with n > 0 under root/<kind key>_<config key>/, annotations
    anno/<split>_<n>.json, and classes.txt (one class name a line, in label order). Returns the dataset folder."""
    key = f"{kind.key}_seed{cfg.seed}_f{cfg.frames}_s{cfg.size}_d{cfg.distractors}_b{cfg.background_drift:g}"
    out = Path(root) / key
    for split, n in sizes.items():
        if n > 0 and not (out / "anno" / f"{split}_{n}.json").exists():
            generate_action_split(out, split, n, cfg, ann_name=f"{split}_{n}.json", kind=kind)
    out.mkdir(parents=True, exist_ok=True)
    classes = out / "classes.txt"
    if not classes.exists():
        classes.write_text("\n".join(kind.classes) + "\n")
    write_json(out / "config.json", asdict(cfg))
    return out


class SyntheticActionDataModule(GeneratedOnFirstUse, VideoClassificationDataModule):
    """The embedded action benchmark, generated into ``cache_dir`` from the seed on first use (only the splits a
    stage reads), then read as any labelled-video set: single view, ``num_frames`` frames one per segment (random
    in each segment for training, the segment starts for testing, the midpoints for validation).

    Args: seed (of the generated clips and of the training order); num_train / num_val / num_test videos (classes
    balanced); clip_frames / clip_size / background_drift of the written clips (ActionConfig); train_flip_p must
    stay 0 for these labels ("moving left" flipped is "moving right"); everything else as VideoClassificationDataModule.
    """

    title = "synthetic actions"
    kind = ACTION_KIND

    def __init__(
        self,
        cache_dir: str = ".cache/synthetic",
        seed: int = 0,
        num_train: int = 3600,
        num_val: int = 240,
        num_test: int = 600,
        clip_frames: int = 16,
        clip_size: int = 128,
        background_drift: float = 0.0,
        num_frames: int = 8,
        img_size: int = 96,
        batch_size: int = 32,
        eval_batch_size: int = 50,
        num_workers: int = 1,
        train_crop_scale: tuple[float, float] = (0.7, 1.0),
        train_flip_p: float = 0.0,
        **kwargs,
    ) -> None:
        if train_flip_p and self.kind.flip_changes_label:
            raise ValueError(f"train_flip_p must be 0 for synthetic actions (a flip turns 'moving left' into 'moving "
                             f"right' under the same label), got {train_flip_p}")
        self.cache_dir = cache_dir
        self.clip_config = ActionConfig(seed=seed, frames=clip_frames, size=clip_size, background_drift=background_drift)
        self.generated_sizes = {"train": num_train, "val": num_val, "test": num_test}
        pending = Path(cache_dir) / "pending"
        super().__init__(
            test=str(pending / "test.json"), val=str(pending / "val.json"), train=str(pending / "train.json"),
            video_root=str(pending / "videos"), class_names=list(self.kind.classes), protocol="segment",
            num_frames=num_frames, test_clips=1, test_crops=1, val_views="single", img_size=img_size, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
            train_crop_scale=train_crop_scale, train_flip_p=train_flip_p, **kwargs,
        )

    def generate(self, sizes: dict[str, int]) -> Path:
        return ensure_action_dataset(self.cache_dir, self.clip_config, sizes, self.kind)

__all__ = ["ACTION_KIND", "ACTIONS", "ActionConfig", "Actor", "ClassKind", "ensure_action_dataset",
           "generate_action_split", "place_actor", "render_action_clip", "sample_actor", "SyntheticActionDataModule"]
