"""Data paths and annotation edges (issues 21 / 22): file options under data_root in every shipped config, the
on_corrupt option of every video DataModule, annotation video paths contained in the video root, empty /
header-only annotation files, duplicate rows, and no datasets cache in the user's home."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import yaml
from test_damaged_video_cli import write_avi

from vidtldr_pl.data_modules.annotations import AnnotationError, build_index, read_annotations, under_root
from vidtldr_pl.data_modules.class_annotations import read_space_list, read_table
from vidtldr_pl.data_modules.classification import (
    KineticsDataModule,
    UCF101DataModule,
    VideoClassificationDataModule,
)
from vidtldr_pl.data_modules.qa import MSRVTTMCDataModule, MSRVTTQADataModule, VideoQADataModule
from vidtldr_pl.data_modules.retrieval import MSRVTTDataModule, VideoTextRetrievalDataModule
from vidtldr_pl.data_modules.synthetic import write_mp4
from vidtldr_pl.data_modules.video import VideoDecodeError

ROOT = Path(__file__).resolve().parents[1]


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)
    return text


# ---------------------------------------------------------------------------------------------- 1. under data_root
def _path_values(node: object, where: str = ""):
    """(key path, value) of every string in a config section."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _path_values(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _path_values(v, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_name_data_files_under_data_root(config):
    """A data file (annotation, class names, label list) of a shipped config is relative to its DataModule's
    data_root: a path under data/ anywhere but data_root itself would be read from the working directory."""
    cfg = yaml.safe_load((ROOT / "configs" / config).read_text()) or {}
    data_args = (cfg.get("data") or {}).get("init_args") or {}
    data_root = data_args.get("data_root")
    for section in ("model", "data"):
        for key, value in _path_values(cfg.get(section) or {}, section):
            if key == "data.init_args.data_root":
                continue
            assert not value.startswith("data/"), f"{config}: {key}={value} is not under data_root ({data_root})"
            if data_root:
                assert not value.startswith(str(data_root)), f"{config}: {key}={value} repeats data_root"


def _ucf101(root: Path) -> Path:
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("ApplyEyeMakeup/v_a.avi\nArchery/v_b.avi\n")
    (root / "labels").mkdir()
    (root / "labels" / "ucf_101_labels.csv").write_text("id,name\n0,Apply Eye Makeup\n1,Archery\n")
    return root


def test_class_names_and_lists_resolve_under_data_root(tmp_path, monkeypatch):
    root = _ucf101(tmp_path / "ucf101")
    monkeypatch.chdir(tmp_path)  # a relative data_root, as the shipped configs have
    dm = UCF101DataModule("ucf101", class_names="labels/ucf_101_labels.csv")
    assert dm.class_names == ["Apply Eye Makeup", "Archery"]
    assert dm.split("test").labels == [0, 1]  # the labels still come from the split files
    assert UCF101DataModule("ucf101").class_names == ["ApplyEyeMakeup", "Archery"]
    absolute = tmp_path / "names.txt"
    absolute.write_text("apply eye makeup\narchery\n")
    assert UCF101DataModule("ucf101", class_names=str(absolute)).class_names == ["apply eye makeup", "archery"]
    absolute.write_text("one\n")
    with pytest.raises(AnnotationError) as err:
        UCF101DataModule("ucf101", class_names=str(absolute)).class_names
    one_line(err, str(absolute), "1 class names", "2 classes")
    with pytest.raises(FileNotFoundError) as err:
        UCF101DataModule("ucf101", class_names="labels/missing.csv").class_names
    one_line(err, str(Path("ucf101") / "labels" / "missing.csv"))

    # Kinetics: class names under data_root; the generic module with a data_root
    (root / "test.csv").write_text("a.mp4 1\n")
    (root / "labels" / "k.csv").write_text("id,name\n" + "".join(f"{i},class {i}\n" for i in range(400)))
    k400 = KineticsDataModule("ucf101", class_names="labels/k.csv")
    assert k400.class_names[399] == "class 399"
    (root / "list.txt").write_text("x/a.mp4 0\nx/b.mp4 1\n")
    generic = VideoClassificationDataModule(data_root="ucf101", val="list.txt", class_names="labels/ucf_101_labels.csv",
                                            list_format="list")
    assert generic.split("validate").videos == [str(Path("ucf101") / "x" / "a.mp4"), str(Path("ucf101") / "x" / "b.mp4")]
    assert generic.class_names == ["Apply Eye Makeup", "Archery"]
    assert VideoClassificationDataModule(data_root="ucf101", val=str(root / "list.txt")).annotation("validate") == str(
        root / "list.txt")  # an absolute path wins


def test_preset_file_overrides_resolve_under_data_root(tmp_path):
    dm = MSRVTTDataModule(str(tmp_path), test_annotation="my/test.json", video_root="clips")
    assert dm.hparams.test_annotation == str(tmp_path / "my" / "test.json")
    assert dm.hparams.video_root == str(tmp_path / "clips")
    assert MSRVTTDataModule(str(tmp_path), test_annotation="/abs/t.json").hparams.test_annotation == "/abs/t.json"
    qa = MSRVTTQADataModule(str(tmp_path), answer_list="answers.json")
    assert qa.hparams.answer_list == str(tmp_path / "answers.json")
    assert MSRVTTMCDataModule(str(tmp_path), test_annotation="mc.json").hparams.test_annotation == str(tmp_path / "mc.json")
    assert under_root("r", "hf://name:test") == "hf://name:test" and under_root(None, "a") == "a"
    assert under_root("data/k600", "data/k600/list.txt") == "data/k600/list.txt"  # resolving twice: the same file
    rebuilt = VideoClassificationDataModule(**{k: v for k, v in VideoClassificationDataModule(
        data_root="data/k600", val="list.txt", class_names="labels/x.csv").hparams.items()})
    assert (rebuilt.hparams.val, rebuilt.hparams.class_names) == ("data/k600/list.txt", "data/k600/labels/x.csv")


# ---------------------------------------------------------------------------------------------- 2. on_corrupt
def _write_avi(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    write_avi(path, frames, fps)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """videos/{ok.mp4, cut.avi (half its bytes)} and one annotation per task family."""
    root = tmp_path_factory.mktemp("damaged")
    (root / "videos").mkdir()
    rng = np.random.default_rng(0)
    write_mp4(root / "videos" / "ok.mp4", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), fps=8)
    _write_avi(root / "videos" / "cut.avi", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    data = (root / "videos" / "cut.avi").read_bytes()
    (root / "videos" / "cut.avi").write_bytes(data[: len(data) // 2])
    (root / "ret.json").write_text(json.dumps([{"video": "ok.mp4", "caption": "a"}, {"video": "cut.avi", "caption": "b"}]))
    (root / "list.txt").write_text("ok.mp4 0\ncut.avi 1\n")
    (root / "qa.json").write_text(json.dumps([{"video": v, "question": "q", "answer": "a", "question_id": i}
                                              for i, v in enumerate(["ok.mp4", "cut.avi"])]))
    (root / "answers.json").write_text('["a"]')
    return root


def _modules(root: Path, **kw) -> dict[str, pl.LightningDataModule]:
    videos = str(root / "videos")
    return {
        "retrieval": VideoTextRetrievalDataModule(test_annotation=str(root / "ret.json"), video_root=videos,
                                                  num_frames=4, img_size=32, num_workers=0, **kw),
        "classification": VideoClassificationDataModule(test=str(root / "list.txt"), video_root=videos, num_classes=2,
                                                        num_frames=4, sampling_rate=1, test_clips=1, test_crops=1,
                                                        img_size=32, num_workers=0, **kw),
        "qa": VideoQADataModule(test_annotation=str(root / "qa.json"), answer_list=str(root / "answers.json"),
                                video_root=videos, num_frames=4, img_size=32, num_workers=0, **kw),
    }


def _decode_all(dm: pl.LightningDataModule) -> None:
    dm.setup("test")
    dataset = dm.test_dataloader().dataset
    for i in range(len(dataset)):
        assert dataset[i] is not None


@pytest.mark.parametrize("family", ["retrieval", "classification", "qa"])
def test_on_corrupt_is_an_option_of_every_video_datamodule(damaged, family):
    with pytest.raises(VideoDecodeError) as err:
        _decode_all(_modules(damaged)[family])
    one_line(err, "cut.avi", "damaged video", "--data.init_args.on_corrupt=keep_decoded", "skip_errors")
    assert "on_corrupt='keep_decoded'" not in str(err.value)
    _decode_all(_modules(damaged, on_corrupt="keep_decoded")[family])  # the damaged clip now decodes


def test_on_corrupt_parses_as_a_cli_option_of_the_presets():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=pl.LightningDataModule)
    for path, args in [("retrieval.MSRVTTDataModule", {"data_root": "x"}),
                       ("retrieval.SyntheticRetrievalDataModule", {}),
                       ("classification.UCF101DataModule", {"data_root": "x"}),
                       ("classification.KineticsDataModule", {"data_root": "x"}),
                       ("qa.MSRVTTQADataModule", {"data_root": "x"}),
                       ("qa.MSRVTTMCDataModule", {"data_root": "x"})]:
        cfg = parser.parse_args(["--data", json.dumps({"class_path": f"vidtldr_pl.data_modules.{path}",
                                                       "init_args": {**args, "on_corrupt": "keep_decoded",
                                                                     "allow_absolute_paths": True}})])
        assert cfg.data.init_args.on_corrupt == "keep_decoded", path
        dm = parser.instantiate_classes(cfg).data
        assert dm.hparams.on_corrupt == "keep_decoded" and dm.hparams.allow_absolute_paths, path


# ---------------------------------------------------------------------------------------------- 4. contained paths
@pytest.mark.parametrize("video", ["../../etc/passwd", "/etc/passwd", "a/../../x.mp4"])
def test_annotation_paths_outside_the_video_root_are_refused(damaged, tmp_path, video):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video": "ok.mp4", "caption": "a"}, {"video": video, "caption": "b"}]))
    with pytest.raises(AnnotationError) as err:
        build_index(read_annotations(ann), damaged / "videos")
    one_line(err, f"{ann}: entry 1", repr(video), "outside the video root", "allow_absolute_paths")
    index = build_index(read_annotations(ann), damaged / "videos", allow_absolute_paths=True)
    assert index.videos[1] == os.path.join(str(damaged / "videos"), video)
    assert build_index(read_annotations(ann)[:1], damaged / "videos").videos == [str(damaged / "videos" / "ok.mp4")]

    # each DataModule family refuses it in setup, before any video is decoded
    (tmp_path / "list.txt").write_text(f"ok.mp4 0\n{video} 1\n")
    (tmp_path / "qa.json").write_text(json.dumps([{"video": v, "question": "q", "answer": "a", "question_id": i}
                                                  for i, v in enumerate(["ok.mp4", video])]))
    videos = str(damaged / "videos")
    for dm, where in [
        (VideoTextRetrievalDataModule(test_annotation=str(ann), video_root=videos), f"{ann}: entry 1"),
        (VideoClassificationDataModule(test=str(tmp_path / "list.txt"), video_root=videos, num_classes=2),
         f"{tmp_path / 'list.txt'}:2"),
        (VideoQADataModule(test_annotation=str(tmp_path / "qa.json"), answer_list=str(damaged / "answers.json"),
                           video_root=videos), f"{tmp_path / 'qa.json'}: entry 1"),
    ]:
        with pytest.raises(AnnotationError) as err:
            dm.setup("test")
        one_line(err, where, repr(video))


# ---------------------------------------------------------------------------------------------- 5. empty, duplicates
@pytest.mark.parametrize("name,content,needle", [
    ("a.csv", "", "empty file"),
    ("a.csv", "video,caption\n", "no entries"),
    ("a.csv", "video,caption\n\n\n", "no entries"),
    ("a.json", "[]", "no entries"),
    ("a.jsonl", "\n", "no entries"),
])
def test_empty_or_header_only_annotation_is_one_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    one_line(err, str(path), needle)


@pytest.mark.parametrize("content,needle", [("", "empty file"), ("video,label\n", "no entries")])
def test_empty_labelled_table_is_one_line(tmp_path, content, needle):
    path = tmp_path / "a.csv"
    path.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_table(path)
    one_line(err, str(path), needle)


def test_duplicate_rows_are_counted_in_one_log_line_and_kept_or_dropped(tmp_path, caplog):
    path = tmp_path / "a.csv"
    path.write_text("video,caption\na.mp4,one\nb.mp4,two\na.mp4,one\na.mp4,one\nb.mp4,three\n")
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl.data_modules.annotations"):
        kept = read_annotations(path)
    assert [(e.video, e.caption) for e in kept] == [("a.mp4", ["one", "one", "one"]), ("b.mp4", ["two", "three"])]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"{path}: 2 exact duplicate row(s) kept" in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vidtldr_pl.data_modules.annotations"):
        dropped = read_annotations(path, duplicates="drop")
    assert [(e.video, e.caption) for e in dropped] == [("a.mp4", "one"), ("b.mp4", ["two", "three"])]
    assert [r.getMessage() for r in caplog.records] == [f"{path}: 2 exact duplicate row(s) dropped (duplicates: drop)"]
    index = build_index(dropped, tmp_path)
    assert len(index.texts) == 3  # one query per distinct caption row

    listing = tmp_path / "l.txt"
    listing.write_text("a.mp4 0\na.mp4 0\nb.mp4 1\n")
    assert len(read_space_list(listing)) == 3 and len(read_space_list(listing, duplicates="drop")) == 2
    json_path = tmp_path / "a.json"
    json_path.write_text(json.dumps([{"video": "a.mp4", "caption": ["x", "y"]}] * 2))
    assert len(read_annotations(json_path)) == 2 and len(read_annotations(json_path, duplicates="drop")) == 1


def test_csv_and_parquet_reads_leave_no_datasets_cache_in_home(tmp_path):
    """A fresh process with HOME in a temporary folder reads a CSV and a parquet file: nothing is written there."""
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("video,caption\na.mp4,one\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"video": ["a.mp4", "a.mp4"], "caption": ["x", "y"]}), tmp_path / "a.parquet")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env["HOME"] = str(home)
    code = ("from vidtldr_pl.data_modules.annotations import read_annotations as r; import sys; "
            f"print([(e.video, e.caption) for e in r({str(csv_path)!r}) + r({str(tmp_path / 'a.parquet')!r})])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[('a.mp4', 'one'), ('a.mp4', ['x', 'y'])]"
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []


# ---------------------------------------------------------------------------------------------- 7. skipped, named
@pytest.mark.parametrize("family", ["retrieval", "classification", "qa"])
def test_skipped_videos_are_recorded_across_worker_processes(damaged, family):
    dm = _modules(damaged, skip_errors=True)[family]
    dm.setup("test")
    assert dm.take_skipped() == []
    from torch.utils.data import DataLoader

    items = list(DataLoader(dm.test_dataloader().dataset, num_workers=1, collate_fn=list))  # no tokenizer needed
    assert sum(item is None for batch in items for item in batch) == 1
    (item,) = dm.take_skipped()
    assert item["video"] == str(damaged / "videos" / "cut.avi") and "damaged video" in item["reason"]
    assert dm.take_skipped() == []  # taken once
    assert _modules(damaged)[family].take_skipped() == []  # without skip_errors nothing is recorded


def test_skipped_videos_are_counted_under_the_table():
    import io

    from rich.console import Console

    from vidtldr_pl.compare import print_results

    rows = [{"name": n, "method": "none", "top1": 50.0, "top5": 100.0,
             "skipped_videos": [{"video": "v/a.mp4", "reason": "x"}, {"video": "v/b.avi", "reason": "y"}]}
            for n in ("none", "ToMe")]
    out = io.StringIO()
    print_results(rows, console=Console(file=out, width=200))
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("2 video(s) skipped as unreadable (skip_errors): v/a.mp4, v/b.avi"), last
    out = io.StringIO()
    print_results([{k: v for k, v in rows[0].items() if k != "skipped_videos"}], console=Console(file=out, width=200))
    assert "skipped" not in out.getvalue()


# ---------------------------------------------------------------------------------------------- 6. media edges
@pytest.mark.parametrize("family", ["retrieval", "classification", "qa"])
def test_datamodules_refuse_still_images_unless_allowed_and_resize_while_decoding(damaged, tmp_path, family):
    from PIL import Image

    image = damaged / "videos" / "photo.mp4"
    Image.fromarray(np.full((36, 52, 3), 90, np.uint8)).save(image, format="PNG")
    (damaged / "videos" / "cut.avi").rename(damaged / "videos" / "cut.bak")
    (damaged / "videos" / "photo.mp4").rename(damaged / "videos" / "cut.avi")  # the entry now names a PNG
    try:
        with pytest.raises(VideoDecodeError) as err:
            _decode_all(_modules(damaged)[family])
        one_line(err, "cut.avi", "a still image (png), not a video")
        dm = _modules(damaged, allow_images=True)[family]
        _decode_all(dm)
        dataset = dm.test_dataloader().dataset
        assert dataset.decoder.resize is not None  # evaluation: frames resized as they decode
    finally:
        (damaged / "videos" / "cut.avi").unlink()
        (damaged / "videos" / "cut.bak").rename(damaged / "videos" / "cut.avi")
