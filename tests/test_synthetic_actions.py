"""The action version of the synthetic benchmark: deterministic bytes, balanced classes, and every class's motion
measurable in the rendered pixels (so the labels are what the clips show)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from vidtldr_pl.data_modules.synthetic import COLOURS, SIZES, shape_mask
from vidtldr_pl.data_modules.synthetic_actions import (
    ACTIONS, ActionConfig, ensure_action_dataset, generate_action_split, render_action_clip, sample_actor,
)
from vidtldr_pl.data_modules.video import decode_frames


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "videos").iterdir()) + [root / "anno" / "test.json"]:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = ActionConfig(seed=5, frames=6, size=64)
    for folder, c in (("a", cfg), ("b", cfg), ("c", ActionConfig(seed=6, frames=6, size=64))):
        generate_action_split(tmp_path / folder, "test", 3, c)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_splits_are_balanced_decodable_and_extend(tmp_path):
    cfg = ActionConfig(seed=1, frames=8, size=64)
    out = ensure_action_dataset(tmp_path, cfg, {"val": 2 * len(ACTIONS), "test": 0})
    entries = json.loads((out / "anno" / f"val_{2 * len(ACTIONS)}.json").read_text())
    assert [e["label"] for e in entries] == list(range(len(ACTIONS))) * 2
    assert (out / "classes.txt").read_text().split("\n")[:-1] == list(ACTIONS)
    for e in entries[:3]:
        assert e["label_name"] == ACTIONS[e["label"]] and e["caption"].endswith(e["label_name"])
        clip = decode_frames(out / "videos" / e["video"], 4)
        assert clip.vlen == 8 and clip.frames.shape == (4, 3, 64, 64)
    first = (out / "videos" / "val_00000.mp4").read_bytes()
    ensure_action_dataset(tmp_path, cfg, {"val": 3 * len(ACTIONS)})  # a larger split keeps the clips it extends
    assert (out / "videos" / "val_00000.mp4").read_bytes() == first
    assert len(list((out / "videos").glob("val_*.mp4"))) == 3 * len(ACTIONS)


def _track(action: str, seed: int = 0) -> tuple[object, list[np.ndarray]]:
    """The actor and its pixels (a boolean mask per frame), rendered without distractors."""
    cfg = ActionConfig(seed=seed, frames=16, size=96, distractors=0)
    rng = np.random.default_rng(seed)
    actor = sample_actor(rng, action)
    video = render_action_clip(rng, actor, cfg)
    return actor, [(frame == np.array(COLOURS[actor.colour])).all(-1) for frame in video]


def _centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize("seed", [0, 1])
def test_each_class_shows_its_shape_moving_its_way(seed):
    assert len(ACTIONS) == 12 and len(set(ACTIONS)) == 12
    for action in ACTIONS:
        shape, direction = action.split(" moving ")
        (dy, dx) = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[direction]
        actor, masks = _track(action, seed)
        assert actor.action == action and actor.label == ACTIONS.index(action) and actor.caption.endswith(action)
        shift = _centre(masks[-1]) - _centre(masks[0])
        assert shift[0] * dy + shift[1] * dx > 0.5 * 96 and abs(shift[0] * dx + shift[1] * dy) < 2, action
        yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
        cy, cx = actor.position(0.0)
        expected = shape_mask(shape, yy, xx, cy * 96, cx * 96, SIZES[actor.size] * 96)
        assert (masks[0] == expected).all() and masks[0].sum() > 20, action  # the class's shape, whole in frame


def test_colour_and_size_do_not_tell_the_class():
    rng = np.random.default_rng(0)
    for action in ACTIONS:
        actors = [sample_actor(rng, action) for _ in range(200)]
        assert {a.colour for a in actors} == set(COLOURS) and {a.size for a in actors} == set(SIZES), action


def test_unknown_action_is_named():
    with pytest.raises(ValueError, match="dancing"):
        sample_actor(np.random.default_rng(0), "circle dancing")


def test_datamodule_serves_the_classification_contract(tmp_path):
    import torch

    from vidtldr_pl.data_modules.synthetic_actions import SyntheticActionDataModule

    dm = SyntheticActionDataModule(cache_dir=str(tmp_path), seed=3, num_train=12, num_val=4, num_test=14, clip_frames=8,
                                   clip_size=64, num_frames=4, img_size=32, batch_size=4, eval_batch_size=5,
                                   num_workers=0)
    dm.setup("test")
    assert sorted(p.name for p in tmp_path.glob("*/videos/*.mp4")) == [f"test_{i:05d}.mp4" for i in range(14)]
    assert dm.num_classes == len(ACTIONS) and dm.class_names == list(ACTIONS)
    assert dm.num_views("test") == 1 and dm.num_videos("test") == 14
    batches = list(dm.test_dataloader())
    assert torch.cat([b["video_index"] for b in batches]).tolist() == list(range(14))
    assert torch.cat([b["label"] for b in batches]).tolist() == [i % len(ACTIONS) for i in range(14)]
    assert (torch.cat([b["view_index"] for b in batches]) == 0).all()
    assert batches[0]["video"].shape == (5, 4, 3, 32, 32) and batches[0]["video"].dtype == torch.float32
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4, 3, 32, 32) and batch["label"].shape == (4,)
    assert len(list(tmp_path.glob("*/videos/*.mp4"))) == 14 + 12 + 4


def test_datamodule_refuses_a_flip():
    from vidtldr_pl.data_modules.synthetic_actions import SyntheticActionDataModule

    with pytest.raises(ValueError, match="train_flip_p"):
        SyntheticActionDataModule(train_flip_p=0.5)


# ------------------------------------------------------------------------------------------- the object benchmark
# The same scenes labelled by colour and shape (vidtldr_pl.data_modules.synthetic_objects): what the zero-shot demo
# classifies, since a model that averages its frames can see it.

def test_action_clips_are_unchanged_by_the_class_kinds():
    """The action benchmark's actors (seed 0, test split) are those it had before the object kind was added."""
    import dataclasses

    from vidtldr_pl.data_modules.synthetic_actions import clip_rng

    cfg = ActionConfig(seed=0)
    actors = [dataclasses.asdict(sample_actor(clip_rng(cfg, "test", i), ACTIONS[i % 12])) for i in range(24)]
    assert hashlib.sha256(json.dumps(actors).encode()).hexdigest()[:16] == "3727064068b593d6"


def test_objects_are_seeded_balanced_and_said_while_generated(tmp_path, monkeypatch, capsys):
    from vidtldr_pl.data_modules.synthetic_objects import OBJECT_KIND, OBJECTS

    assert len(OBJECTS) == 24 == len(set(OBJECTS)) and OBJECTS[:4] == ("red circle", "red square", "red triangle",
                                                                      "green circle")
    monkeypatch.setenv("VIDTLDR_PROGRESS_INTERVAL", "0.001")
    cfg = ActionConfig(seed=2, frames=6, size=64)
    out = ensure_action_dataset(tmp_path / "a", cfg, {"test": 26}, OBJECT_KIND)
    assert out.name == "objects_seed2_f6_s64_d3_b0" and "generating synthetic object test split" in capsys.readouterr().err
    entries = json.loads((out / "anno" / "test_26.json").read_text())
    assert [e["label"] for e in entries] == [i % 24 for i in range(26)]
    assert [e["label_name"] for e in entries] == [OBJECTS[i % 24] for i in range(26)]
    assert (out / "classes.txt").read_text().split("\n")[:-1] == list(OBJECTS)
    for e in entries:
        colour, shape = e["label_name"].split()
        assert (e["actor"]["colour"], e["actor"]["shape"]) == (colour, shape) and f"{colour} {shape}" in e["caption"]
    clip = decode_frames(out / "videos" / entries[0]["video"], 3)
    assert clip.vlen == 6 and clip.frames.shape == (3, 3, 64, 64)
    # same seed: the same bytes; another seed, or the action kind with this seed: other clips
    ensure_action_dataset(tmp_path / "b", cfg, {"test": 26}, OBJECT_KIND)
    assert _digest_split(out, "test_26") == _digest_split(tmp_path / "b" / out.name, "test_26")
    other = ensure_action_dataset(tmp_path / "c", ActionConfig(seed=3, frames=6, size=64), {"test": 26}, OBJECT_KIND)
    assert _digest_split(other, "test_26") != _digest_split(out, "test_26")
    actions = ensure_action_dataset(tmp_path / "a", cfg, {"test": 2})
    assert actions.name.startswith("actions_") and json.loads((actions / "anno" / "test_2.json").read_text())[0][
        "actor"]["centre"] != entries[0]["actor"]["centre"]


def _digest_split(root, ann: str) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "videos").iterdir()) + [root / "anno" / f"{ann}.json"]:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed", [0, 1])
def test_each_object_class_shows_its_colour_and_shape(seed):
    """Rendered without distractors, the pixels of the class's colour are exactly the class's shape at the actor's
    place, in every frame, and whole in the frame."""
    from vidtldr_pl.data_modules.synthetic_objects import OBJECTS, sample_object

    cfg = ActionConfig(seed=seed, frames=8, size=96, distractors=0)
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    for name in OBJECTS:
        colour, shape = name.split()
        rng = np.random.default_rng(seed)
        actor = sample_object(rng, name)
        assert (actor.colour, actor.shape) == (colour, shape)
        video = render_action_clip(rng, actor, cfg)
        for f in (0, cfg.frames - 1):
            cy, cx = actor.position(f / (cfg.frames - 1))
            expected = shape_mask(shape, yy, xx, cy * 96, cx * 96, SIZES[actor.size] * 96)
            painted = (video[f] == np.array(COLOURS[colour])).all(-1)
            assert (painted == expected).all() and painted.sum() > 20, (name, f)


def test_direction_and_size_do_not_tell_the_object_class():
    from vidtldr_pl.data_modules.synthetic import MOTIONS
    from vidtldr_pl.data_modules.synthetic_objects import OBJECTS, sample_object

    rng = np.random.default_rng(0)
    for name in OBJECTS:
        actors = [sample_object(rng, name) for _ in range(100)]
        assert {a.motion for a in actors} == set(MOTIONS) and {a.size for a in actors} == set(SIZES), name
    with pytest.raises(ValueError, match="pink circle"):
        sample_object(rng, "pink circle")


def test_object_datamodule_serves_the_classification_contract(tmp_path):
    import torch

    from vidtldr_pl.data_modules.synthetic_objects import OBJECTS, SyntheticObjectDataModule

    dm = SyntheticObjectDataModule(cache_dir=str(tmp_path), seed=3, num_test=26, clip_frames=6, clip_size=64,
                                   num_frames=3, img_size=32, eval_batch_size=10, num_workers=0, train_flip_p=0.5)
    dm.setup("test")
    assert [p.parent.parent.name for p in tmp_path.glob("*/videos/*.mp4")] == ["objects_seed3_f6_s64_d3_b0"] * 26
    assert dm.num_classes == 24 and dm.class_names == list(OBJECTS) and dm.num_videos("test") == 26
    batches = list(dm.test_dataloader())
    assert torch.cat([b["label"] for b in batches]).tolist() == [i % 24 for i in range(26)]
    assert torch.cat([b["video_index"] for b in batches]).tolist() == list(range(26))
    assert batches[0]["video"].shape == (10, 3, 3, 32, 32) and batches[0]["video"].dtype == torch.float32
