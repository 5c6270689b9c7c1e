"""Retrieval DataModules on a small MSRVTT-format dataset with real mp4 files written by PyAV."""
from __future__ import annotations

import json
import logging

import av
import numpy as np
import pytest
import torch

from vidtldr_pl.data_modules.annotations import AnnotationError, build_index, read_annotations
from vidtldr_pl.data_modules.retrieval import DiDeMoDataModule, MSRVTTDataModule, SSv2LabelDataModule, VideoTextRetrievalDataModule
from vidtldr_pl.data_modules.video import VideoDecodeError
from vidtldr_pl.metrics.retrieval import gt_from_groups
from vidtldr_pl.text import build_vocab


def write_video(path, frames=16, size=48, seed=0):
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), (i * 13 + seed * 40) % 255, dtype=np.uint8)
            img[: size // 2, : size // 2] = rng.integers(0, 255, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


CAPTIONS = ["a red ball rolls left", "a man, playing guitar!", "Dogs run in the park.", "a cat sleeps"]


@pytest.fixture()
def msrvtt_root(tmp_path):
    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    (root / "anno_downstream").mkdir()
    for i in range(4):
        write_video(root / "videos" / f"video{i}.mp4", seed=i)
    test = [{"video": f"video{i}.mp4", "caption": c} for i, c in enumerate(CAPTIONS)]
    train = [{"video": f"video{i}.mp4", "caption": [c, c + " again"]} for i, c in enumerate(CAPTIONS)]
    (root / "anno_downstream" / "msrvtt_ret_test1k.json").write_text(json.dumps(test))
    (root / "anno_downstream" / "msrvtt_ret_train9k.json").write_text(json.dumps(train))
    vocab = tmp_path / "tok"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(build_vocab(CAPTIONS + ["again"])))
    return root, vocab


def _module(root, vocab, **kw):
    return MSRVTTDataModule(str(root), tokenizer=str(vocab), num_frames=4, img_size=32, eval_batch_size=3, num_workers=0, **kw)


def test_msrvtt_eval_batches_and_texts(msrvtt_root):
    root, vocab = msrvtt_root
    dm = _module(root, vocab)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [b["video"].shape for b in batches] == [(3, 4, 3, 32, 32), (1, 4, 3, 32, 32)]
    assert torch.cat([b["video_index"] for b in batches]).tolist() == [0, 1, 2, 3]
    texts = dm.eval_texts("validate")
    assert texts["input_ids"].shape == (4, 32) and texts["attention_mask"][1].sum() == 5  # [CLS] + 4 words, UMT style
    assert dm.txt2vid == [0, 1, 2, 3] and dm.vid2txt == [[0], [1], [2], [3]] and dm.num_videos == 4
    assert dm.index("validate").texts[1] == "a man playing guitar"  # official caption cleaning


def test_training_batches_one_per_caption(msrvtt_root):
    root, vocab = msrvtt_root
    dm = _module(root, vocab, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 8
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 4, 3, 32, 32) and batch["input_ids"].shape == (4, 32)
    assert batch["video_index"].max() < 4


def test_index_ids_follow_official_build_data():
    from vidtldr_pl.data_modules.annotations import Entry

    def as_lists(gt):
        return [list(g) if not isinstance(g, int) else [g] for g in gt]

    multi_text = [Entry("a.mp4", ["x", "y"]), Entry("b.mp4", "z")]
    idx = build_index(multi_text, "/v")
    gt = gt_from_groups([2, 1])
    assert as_lists(idx.vid2txt) == as_lists(gt.v2t) and as_lists(idx.txt2vid) == as_lists(gt.t2v)
    multi_vision = [Entry(["a.mp4", "b.mp4"], "push something"), Entry("c.mp4", "pull it")]
    idx = build_index(multi_vision, "/v", has_multi_vision_gt=True)
    gt = gt_from_groups([2, 1], has_multi_vision_gt=True)
    assert as_lists(idx.txt2vid) == as_lists(gt.t2v) and as_lists(idx.vid2txt) == as_lists(gt.v2t)
    assert idx.videos == ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"]
    para = build_index([Entry("a.mp4", ["One.", "Two!"])], "/v", paragraph=True)
    assert para.texts == ["one two"]


@pytest.mark.parametrize("content,needle", [
    ('[{"video": "a.mp4"}]', "entry 0 has no 'caption' key"),
    ('[{"video": "a.mp4", "caption": 3}]', "entry 0 key 'caption' must be a string"),
    ('{"video": "a.mp4"}', "expected a JSON list"),
    ('[{"video": "a.mp4", "caption": "x"},', "not valid JSON"),
    ("[]", "no entries"),
])
def test_malformed_annotations(tmp_path, content, needle):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=needle) as err:
        read_annotations(path)
    assert str(path) in str(err.value)


def test_csv_through_datasets_groups_captions(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text("video,caption\na.mp4,first\nb.mp4,second\na.mp4,third\n")
    entries = read_annotations(path)
    assert [(e.video, e.caption) for e in entries] == [("a.mp4", ["first", "third"]), ("b.mp4", "second")]
    with pytest.raises(AnnotationError, match="missing column"):
        read_annotations(path, caption_key="text")


def test_missing_data_is_a_short_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="video root not found.*MSRVTT"):
        MSRVTTDataModule(str(tmp_path / "nope")).setup("test")
    (tmp_path / "videos").mkdir()
    with pytest.raises(FileNotFoundError, match="annotation file not found.*msrvtt_ret_test1k.json"):
        MSRVTTDataModule(str(tmp_path)).setup("test")


def test_bad_video_fails_or_is_skipped(msrvtt_root, caplog):
    root, vocab = msrvtt_root
    (root / "videos" / "video2.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    dm = _module(root, vocab)
    dm.setup("test")
    with pytest.raises(VideoDecodeError, match="video2.mp4"):
        list(dm.test_dataloader())
    dm = _module(root, vocab, skip_errors=True)
    dm.setup("test")
    with caplog.at_level(logging.WARNING):
        indices = torch.cat([b["video_index"] for b in dm.test_dataloader()]).tolist()
    assert indices == [0, 1, 3] and "video2.mp4" in caplog.text


def test_presets_carry_official_flags(tmp_path):
    didemo, ssv2 = DiDeMoDataModule(str(tmp_path)), SSv2LabelDataModule(str(tmp_path))
    assert didemo.hparams.paragraph and didemo.hparams.trimmed30 and didemo.hparams.max_txt_len == 64
    assert ssv2.hparams.has_multi_vision_gt and ssv2.hparams.max_txt_len == 25
    assert MSRVTTDataModule(str(tmp_path), max_txt_len=40).hparams.max_txt_len == 40
    generic = VideoTextRetrievalDataModule(test_annotation="a.json", video_root="v")
    assert generic.hparams.tokenizer_flavor == "umt"
