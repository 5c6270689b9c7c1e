"""Classification data: every annotation format parses (official-looking files written here) and bad ones fail with
one line naming the file and line; VideoMAE's view protocols; the views the DataModule cuts equal a hand-cut
transcription; evaluate.py with k400_videomae.yaml and no data / checkpoint stops with one line, exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from classification_data import IMG, make_datamodule, one_thread, write_list, write_videos

from vidtldr_pl.data_modules.annotations import AnnotationError
from vidtldr_pl.data_modules.class_annotations import read_class_names, read_table
from vidtldr_pl.data_modules.classification import (
    HMDB51DataModule,
    KineticsDataModule,
    SSv2DataModule,
    UCF101DataModule,
    VideoClassificationDataModule,
)
from vidtldr_pl.data_modules.transforms import IMAGENET_MEAN, IMAGENET_STD
from vidtldr_pl.data_modules.video import count_frames, decode_frames
from vidtldr_pl.data_modules.views import DenseClips, FrameRule, SegmentClips, crop_starts

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(exc_info, *parts: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


# ---------------------------------------------------------------------------------------------- view protocols
def test_dense_protocol_is_videomae_kinetics():
    dense = DenseClips(16, 4)
    buffer = dense.frames(300, "test")
    assert buffer == list(range(0, 300, 4))  # every 4th frame of the whole video: F = 75
    assert [dense.clip(75, k, 5)[0] for k in range(5)] == [0, 14, 29, 44, 59]  # int(k * (75 - 16) / 4)
    assert dense.clip(75, 4, 5) == list(range(59, 75))
    assert dense.frames(40, "test") == list(range(0, 40, 4)) + [36] * 6  # fewer than 16: the last repeated
    assert [dense.clip(16, k, 5)[0] for k in range(5)] == [0] * 5
    # training / validation windows: 16 frames spread over 64 (linspace, as VideoMAE's loader)
    assert dense.frames(300, "val") == [117, 121, 125, 129, 134, 138, 142, 146, 151, 155, 159, 163, 168, 172, 176, 180]
    import random

    draws = {tuple(dense.frames(300, "train", random.Random(s))) for s in range(20)}
    assert len(draws) > 10 and all(t[-1] - t[0] in (63,) and 64 <= t[-1] + 1 <= 299 for t in draws)


def test_segment_protocol_is_videomae_ssv2():
    seg = SegmentClips(16)
    buffer = seg.frames(45, "test")  # tick = 45 / 16
    starts = [0, 2, 5, 8, 11, 14, 16, 19, 22, 25, 28, 30, 33, 36, 39, 42]
    mids = [1, 4, 7, 9, 12, 15, 18, 21, 23, 26, 29, 32, 35, 37, 40, 43]
    assert buffer == sorted(starts + mids)
    assert [buffer[i] for i in seg.clip(32, 0, 2)] == starts and [buffer[i] for i in seg.clip(32, 1, 2)] == mids
    assert seg.frames(45, "val") == mids
    import random

    train = seg.frames(45, "train", random.Random(0))  # one frame in each segment of 45 // 16 = 2 frames
    assert all(2 * x <= f < 2 * x + 2 for x, f in enumerate(train))
    with pytest.raises(ValueError, match="2 temporal views"):
        seg.clip(32, 0, 3)


def test_crop_offsets_and_frame_rule():
    assert crop_starts(298, 224, 3) == [0, 37, 74] and crop_starts(298, 224, 1) == [37]
    rule = FrameRule(DenseClips(4, 2), "test")
    assert rule(99, 11, None) == [0, 2, 4, 6, 8, 10]
    import pickle

    assert pickle.loads(pickle.dumps(rule)) == rule  # DataLoader workers


def test_dataset_views_equal_a_hand_cut_transcription(tmp_path):
    """Every view of a landscape and a portrait clip: decode all frames, keep every 2nd, resize the short side to 64
    (long side int(64 * long / short)), clip k of 5 from int(k * (F - 4) / 4), crop j of 3 along the long side at
    int(j * (L - 64) / 2), ImageNet normalisation. View v = (clip v // 3, crop v % 3)."""
    names = write_videos(tmp_path / "videos", [0, 1])  # clip 0: portrait 72 x 96 (w x h), clip 1: landscape 96 x 72
    write_list(tmp_path / "test.txt", names, [0, 1])
    dm = make_datamodule(tmp_path / "videos", tmp_path / "test.txt")
    dataset = dm.dataset("test")
    assert len(dataset) == 2 * 15
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with one_thread():
        for i, name in enumerate(names):
            path = tmp_path / "videos" / name
            vlen = count_frames(path)
            frames = decode_frames(path, vlen, "middle").frames  # all frames, in order
            kept = frames[::2]
            h, w = kept.shape[-2:]
            size = (int(IMG * h / w), IMG) if w < h else (IMG, int(IMG * w / h))
            resized = F.interpolate(kept.float(), size=size, mode="bilinear", align_corners=False).clamp(0, 255).round()
            long = max(size)
            for v in range(15):
                k, j = divmod(v, 3)
                start = int(k * max((kept.shape[0] - 4) / 4, 0))
                offset = int(j * (long - IMG) / 2)
                clip = resized[start:start + 4]
                clip = clip[..., offset:offset + IMG, :] if h >= w else clip[..., offset:offset + IMG]
                expected = (clip / 255.0 - mean) / std
                item = dataset[i * 15 + v]
                assert (item["video_index"], item["view_index"], item["label"]) == (i, v, i)
                torch.testing.assert_close(item["video"], expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- annotation formats
def test_kinetics_lists(tmp_path):
    (tmp_path / "train.csv").write_text("train/abc_000001_000011.mp4 0\ntrain/with space.mp4 399\n")
    (tmp_path / "val.csv").write_text("val/x.mp4 12\n\nval/y.mp4 3\n")
    (tmp_path / "test.csv").write_text("/abs/val/x.mp4 12\n")
    with pytest.raises(AnnotationError) as err:  # a path outside the video root: refused unless opted in
        KineticsDataModule(str(tmp_path), variant=400).split("test")
    _one_line_error(err, "test.csv:1: video path '/abs/val/x.mp4' is outside the video root")
    dm = KineticsDataModule(str(tmp_path), variant=400, allow_absolute_paths=True)
    assert dm.split("fit").labels == [0, 399] and dm.split("fit").videos[1] == str(tmp_path / "train/with space.mp4")
    assert dm.split("validate").labels == [12, 3] and dm.split("test").videos == ["/abs/val/x.mp4"]
    assert dm.num_classes == 400 and dm.num_views("test") == 15 and dm.num_views("validate") == 1
    assert dm.class_names[:2] == ["0", "1"]
    for text, what in [("val/x.mp4 400\n", "test.csv:1: label 400 outside [0, 400)"),
                       ("a.mp4 1\nval/x.mp4\n", "test.csv:2: expected '<video path> <integer label>'"),
                       ("a.mp4 1\nb.mp4,2\n", "test.csv:2:"), ("a.mp4 abseiling\n", "test.csv:1:")]:
        (tmp_path / "test.csv").write_text(text)
        with pytest.raises(AnnotationError) as err:
            KineticsDataModule(str(tmp_path)).split("test")
        _one_line_error(err, what)


def test_generic_tables_folders_and_class_names(tmp_path):
    names = tmp_path / "names.csv"
    names.write_text("id,name\n0,abseiling\n1,air drumming\n2,zumba\n")
    assert read_class_names(names) == ["abseiling", "air drumming", "zumba"]
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n")
    assert read_class_names(tmp_path / "classInd.txt") == ["ApplyEyeMakeup", "ApplyLipstick"]
    (tmp_path / "plain.txt").write_text("brush hair\ncartwheel\n")
    assert read_class_names(tmp_path / "plain.txt") == ["brush hair", "cartwheel"]
    (tmp_path / "gap.txt").write_text("0 a\n2 b\n")
    with pytest.raises(AnnotationError, match="without gaps"):
        read_class_names(tmp_path / "gap.txt")

    (tmp_path / "a.csv").write_text("video,label\nv1.mp4,zumba\nv2.mp4,1\n")
    dm = VideoClassificationDataModule(test=str(tmp_path / "a.csv"), video_root=str(tmp_path), class_names=str(names))
    assert dm.split("test").labels == [2, 1] and dm.split("test").videos == [str(tmp_path / "v1.mp4"), str(tmp_path / "v2.mp4")]
    (tmp_path / "b.json").write_text(json.dumps([{"video": "v1.mp4", "label": "run"}, {"video": "v2.mp4", "label": "jump"}]))
    dm = VideoClassificationDataModule(test=str(tmp_path / "b.json"), video_root=str(tmp_path))
    assert dm.class_names == ["jump", "run"] and dm.split("test").labels == [1, 0] and dm.num_classes == 2
    (tmp_path / "c.jsonl").write_text('{"video": "v1.mp4", "label": 4}\n{"video": "v2.mp4", "label": 0}\n')
    dm = VideoClassificationDataModule(test=str(tmp_path / "c.jsonl"), video_root=str(tmp_path))
    assert dm.split("test").labels == [4, 0] and dm.num_classes == 5
    (tmp_path / "d.txt").write_text("v1.mp4 1\nv2.mp4 0\n")
    assert VideoClassificationDataModule(test=str(tmp_path / "d.txt")).split("test").labels == [1, 0]

    folders = tmp_path / "folders"
    for cls, count in (("walk", 2), ("run", 1)):
        (folders / cls).mkdir(parents=True)
        for i in range(count):
            (folders / cls / f"{i}.mp4").write_bytes(b"")
    (folders / "run" / "notes.txt").write_text("not a video")
    dm = VideoClassificationDataModule(test=str(folders))
    assert dm.class_names == ["run", "walk"] and dm.split("test").labels == [0, 1, 1]

    bad = {
        "e.csv": ("video,label\nv1.mp4,zumba\nv2.mp4,tango\n", "e.csv:3: unknown class 'tango'"),
        "f.csv": ("path,label\nv1.mp4,1\n", "f.csv:1: header has no column 'video'"),
        "g.json": ('[{"video": "v1.mp4", "label": 0},\n {"video": "v2.mp4"}]', "g.json: entry 1: expected an object"),
        "h.jsonl": ('{"video": "v1.mp4", "label": 0}\n{"video": "v2.mp4", label: 1}\n', "h.jsonl:2: not valid JSON"),
        "i.json": ('[{"video": "v1.mp4", "label": 0},\n', "i.json:2: not valid JSON"),
        "j.csv": ("video,label\nv1.mp4,7\n", "j.csv:2: label 7 outside [0, 3)"),
    }
    for name, (text, what) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AnnotationError) as err:
            VideoClassificationDataModule(test=str(tmp_path / name), class_names=str(names)).split("test")
        _one_line_error(err, what)
    assert read_table(tmp_path / "a.csv")[0].where == f"{tmp_path / 'a.csv'}:2"


def test_ssv2_official_files(tmp_path):
    labels = {"Approaching something with your camera": "0", "Holding something next to something": "1",
              "Pushing something from left to right": "2"}
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "something-something-v2-labels.json").write_text(json.dumps(labels))
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
             {"id": "42326", "label": "approaching a door with your camera",
              "template": "Approaching [something] with your camera", "placeholders": ["a door"]}]
    val = [{"id": "74225", "label": "pushing a box from left to right",
            "template": "Pushing [something] from left to right", "placeholders": ["a box"]}]
    (tmp_path / "labels" / "something-something-v2-train.json").write_text(json.dumps(train))
    (tmp_path / "labels" / "something-something-v2-validation.json").write_text(json.dumps(val))
    dm = SSv2DataModule(str(tmp_path))
    assert dm.class_names == list(labels) and dm.num_classes == 3
    assert dm.split("fit").labels == [1, 0] and dm.split("test").labels == [2]
    assert dm.split("test").videos == [str(tmp_path / "20bn-something-something-v2" / "74225.webm")]
    assert dm.num_views("test") == 6 and dm.hparams.train_flip_p == 0.0 and isinstance(dm.protocol, SegmentClips)
    val[0]["template"] = "Pushing [something] from right to left"
    (tmp_path / "labels" / "something-something-v2-validation.json").write_text(json.dumps(val))
    with pytest.raises(AnnotationError) as err:
        SSv2DataModule(str(tmp_path)).split("test")
    _one_line_error(err, "something-something-v2-validation.json: entry 0 (id 74225)", "not in the label file")
    (tmp_path / "labels" / "test.json").write_text(json.dumps([{"id": "1420"}]))
    with pytest.raises(AnnotationError) as err:
        SSv2DataModule(str(tmp_path), test_split="labels/test.json").split("test")
    _one_line_error(err, "test.json: entry 0 (id 1420) has no 'template'")


def test_ucf101_official_splits(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n3 HandstandPushups\r\n")
    for split in (1, 2):
        g = "g08" if split == 1 else "g15"
        (lists / f"trainlist0{split}.txt").write_text(
            f"ApplyEyeMakeup/v_ApplyEyeMakeup_{g}_c01.avi 1\r\nHandstandPushups/v_HandStandPushups_{g}_c02.avi 3\r\n")
        (lists / f"testlist0{split}.txt").write_text(
            "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\nHandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    dm = UCF101DataModule(str(tmp_path), split=2)
    assert dm.class_names == ["ApplyEyeMakeup", "ApplyLipstick", "HandstandPushups"]
    assert dm.split("fit").labels == [0, 2] and "g15" in dm.split("fit").videos[0]
    assert dm.split("test").labels == [1, 2] and dm.split("validate").labels == [1, 2]
    assert dm.split("test").videos[0] == str(tmp_path / "UCF-101" / "ApplyLipstick" / "v_ApplyLipstick_g01_c01.avi")
    assert UCF101DataModule(str(tmp_path), split=1).split("fit").videos[0].endswith("g08_c01.avi")
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n")
    with pytest.raises(AnnotationError) as err:
        UCF101DataModule(str(tmp_path)).split("fit")
    _one_line_error(err, "trainlist01.txt:1: label 2 is 'ApplyLipstick' but the video is in 'ApplyEyeMakeup'")
    (lists / "testlist01.txt").write_text("ApplyLipstick/a.avi\nYoYo/v_YoYo_g01_c01.avi\n")
    with pytest.raises(AnnotationError) as err:
        UCF101DataModule(str(tmp_path)).split("test")
    _one_line_error(err, "testlist01.txt:2: class folder 'YoYo' is not in classInd.txt")
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        UCF101DataModule(str(tmp_path), split=4)


def test_hmdb51_official_splits(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    rows = {"brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 ", "Aussie_Brunette_Brushing_Hair_II_brush_hair_u_nm_np4_ri_med_3.avi 2 ",
                           "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi 0 "],
            "cartwheel": ["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 2 ", "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi 1 "]}
    for cls, lines in rows.items():
        for split in (1, 2, 3):
            body = lines if split != 3 else [line.replace(" 1 ", " 9 ") for line in lines]
            (splits / f"{cls}_test_split{split}.txt").write_text("\n".join(body) + "\n")
    dm = HMDB51DataModule(str(tmp_path), split=2)
    assert dm.class_names == ["brush_hair", "cartwheel"] and dm.num_classes == 2
    assert dm.split("fit").labels == [0, 1] and dm.split("test").labels == [0, 1]
    assert dm.split("fit").videos[0] == str(tmp_path / "hmdb51_org" / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi")
    assert dm.num_views("test") == 30 and dm.protocol == DenseClips(16, 2)
    with pytest.raises(AnnotationError) as err:
        HMDB51DataModule(str(tmp_path), split=3).split("fit")
    _one_line_error(err, "brush_hair_test_split3.txt:1: expected '<video> <flag>' with flag 1 (train), 2 (test) or 0")


def test_missing_data_is_one_line_per_preset(tmp_path):
    cases = [
        (KineticsDataModule(str(tmp_path / "k400")), "Kinetics-400 test annotation not found"),
        (SSv2DataModule(str(tmp_path / "ssv2")), "SSv2 test annotation not found"),
        (UCF101DataModule(str(tmp_path / "ucf")), "UCF101 split file not found"),
        (HMDB51DataModule(str(tmp_path / "hmdb")), "HMDB51 split files not found"),
    ]
    for dm, what in cases:
        with pytest.raises(FileNotFoundError) as err:
            dm.setup("test")
        _one_line_error(err, what)
    names = write_videos(tmp_path / "videos", [0])
    write_list(tmp_path / "test.txt", names + ["gone.mp4"], [0, 1])
    with pytest.raises(FileNotFoundError) as err:
        make_datamodule(tmp_path / "videos", tmp_path / "test.txt").setup("test")
    _one_line_error(err, "1 of 2 dataset test videos not found", "gone.mp4")


def _evaluate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--config", "k400_videomae.yaml", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_evaluate_k400_config_without_checkpoint_or_data(tmp_path):
    out = _evaluate(tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "Traceback" not in out.stderr
    # both missing inputs at once, before anything heavy (vidtldr_pl.preflight)
    assert errors[0].startswith("error: 2 problems: (1) data root data/k400")
    assert "(2) checkpoint file not found: checkpoints/videomae_b16_k400_ft.pth" in errors[0]
    assert "VideoMAE" in errors[0] and "MODEL_ZOO" in errors[0]


@pytest.mark.slow
def test_evaluate_k400_config_without_data(tmp_path):
    """A checkpoint-free model, and still no data: the missing list is named."""
    (tmp_path / "k400").mkdir()  # the folder exists (else preflight names it), its annotation does not
    out = _evaluate(tmp_path, "--model.init_args.model=videomae_tiny", "--model.init_args.checkpoint=null",
                    f"--data.init_args.data_root={tmp_path / 'k400'}", "--trainer.accelerator=cpu",
                    "--trainer.precision=32")
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert errors[0].startswith(f"error: Kinetics-400 test annotation not found: {tmp_path / 'k400' / 'test.csv'}")
    assert not list(tmp_path.rglob("*.json"))  # nothing written


def test_all_classification_configs_parse():
    """Every config's model / data / trainer sections validate against the classes' signatures (in-process: the
    checkpoints they name do not exist here); the merge schedules are the ones the comments derive."""
    import lightning.pytorch as pl
    import yaml
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=pl.LightningModule)
    parser.add_argument("--data", type=pl.LightningDataModule)
    parser.add_class_arguments(pl.Trainer, "trainer")
    for name in ("k400_videomae", "k400_videomae_l", "ssv2_videomae", "ssv2_videomae_l", "ucf101_videomae",
                 "hmdb51_videomae"):
        text = (ROOT / "configs" / f"{name}.yaml").read_text()
        cfg = parser.parse_object(yaml.safe_load(text))
        assert cfg.model.class_path == "vidtldr_pl.tasks.ClassificationTask", name
        merge = next(cb for cb in cfg.trainer.callbacks if cb.class_path.endswith("TokenMerging"))
        assert merge.init_args.r == ([354, 258] if name.endswith("_l") else [420, 140, 70]), name
        assert "58.0 %" in text and "python -m vidtldr_pl.flops.report" in text, name
