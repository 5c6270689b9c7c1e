"""The synthetic benchmark: deterministic bytes from a seed, real decodable videos, captions naming the objects."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from vidtldr_pl.data_modules.annotations import read_annotations
from vidtldr_pl.data_modules.synthetic import COLOURS, SyntheticConfig, generate_split, render_clip, sample_clip, vocabulary
from vidtldr_pl.data_modules.video import decode_frames


def _digest(root):
    h = hashlib.sha256()
    for p in sorted((root / "videos").iterdir()) + [root / "anno" / "test.json"]:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    cfg = SyntheticConfig(seed=7, frames=6, size=64)
    generate_split(tmp_path / "a", "test", 3, cfg)
    generate_split(tmp_path / "b", "test", 3, cfg)
    generate_split(tmp_path / "c", "test", 3, SyntheticConfig(seed=8, frames=6, size=64))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_clips_decode_and_captions_name_the_objects(tmp_path):
    cfg = SyntheticConfig(seed=1, frames=8, size=64)
    ann = generate_split(tmp_path, "val", 4, cfg)
    entries = read_annotations(ann)
    raw = json.loads(ann.read_text())
    for entry, r in zip(entries, raw):
        clip = decode_frames(tmp_path / "videos" / entry.video, 4)
        assert clip.vlen == 8 and clip.frames.shape == (4, 3, 64, 64)
        for obj in r["objects"]:
            assert f"{obj['size']} {obj['colour']} {obj['shape']}" in entry.caption and obj["motion"] in entry.caption
    assert all(w in vocabulary() for e in entries for w in e.caption.split())


def test_named_object_is_visible_and_moves():
    cfg = SyntheticConfig(seed=3, frames=8, size=96, max_objects=1, distractors=0)
    rng = np.random.default_rng(0)
    objects, _ = sample_clip(rng, cfg)
    video = render_clip(rng, objects, cfg)
    colour = np.array(COLOURS[objects[0].colour])
    centres = []
    for frame in video[[0, -1]]:
        ys, xs = np.nonzero((frame == colour).all(-1))
        assert len(ys) > 20
        centres.append((ys.mean(), xs.mean()))
    assert np.hypot(centres[1][0] - centres[0][0], centres[1][1] - centres[0][1]) > 0.3 * cfg.size


def test_synthetic_datamodule_end_to_end(tmp_path):
    import torch

    from vidtldr_pl.data_modules.retrieval import SyntheticRetrievalDataModule

    dm = SyntheticRetrievalDataModule(cache_dir=str(tmp_path), seed=2, num_train=4, num_val=3, num_test=5, clip_frames=8,
                                      clip_size=64, num_frames=4, img_size=32, batch_size=2, eval_batch_size=4, num_workers=0)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert torch.cat([b["video_index"] for b in batches]).tolist() == list(range(5))
    assert batches[0]["video"].shape == (4, 4, 3, 32, 32)
    texts = dm.eval_texts("test")
    assert texts["input_ids"].shape == (5, 24) and (texts["input_ids"] != 1).all()  # no [UNK]: vocab covers the grammar
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 24)


def test_datamodule_generates_only_the_splits_a_stage_reads(tmp_path):
    from vidtldr_pl.data_modules.retrieval import SyntheticRetrievalDataModule

    dm = SyntheticRetrievalDataModule(cache_dir=str(tmp_path), num_train=5, num_val=2, num_test=3, clip_frames=4,
                                      clip_size=32, num_frames=2, img_size=32, num_workers=0)
    dm.setup("test")
    videos = sorted(p.name for p in tmp_path.glob("*/videos/*.mp4"))
    assert videos == [f"test_{i:05d}.mp4" for i in range(3)]
    assert len(dm.index("test").videos) == 3 and len(dm.eval_texts("test")["input_ids"]) == 3
    dm.setup("fit")
    names = {p.name.split("_")[0] for p in tmp_path.glob("*/videos/*.mp4")}
    assert names == {"train", "val", "test"} and len(list(tmp_path.glob("*/videos/train_*.mp4"))) == 5
    # a larger test split extends the smaller one with the same first clips
    first = (next(tmp_path.glob("*/videos")) / "test_00000.mp4").read_bytes()
    big = SyntheticRetrievalDataModule(cache_dir=str(tmp_path), num_train=0, num_val=0, num_test=4, clip_frames=4,
                                       clip_size=32, num_frames=2, img_size=32, num_workers=0)
    big.setup("test")
    assert len(big.index("test").videos) == 4 and (next(tmp_path.glob("*/videos")) / "test_00000.mp4").read_bytes() == first
    assert not list(tmp_path.glob("*/videos/.*"))  # no temporary files left
