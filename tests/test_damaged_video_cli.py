"""A damaged video in a custom dataset (docs/custom_dataset.md) ends evaluate.py / train.py with one error line
naming the file and the skip_errors option, exit code 2, no traceback -- also when a DataLoader worker decoded it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidtldr_pl.data_modules.synthetic import write_mp4
from vidtldr_pl.backbones import create_model
from vidtldr_pl.text import build_vocab

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "custom_dataset_example.yaml"
ROWS = [("cat.mp4", "a cat sleeps"), ("dog.avi", "a dog runs"), ("car.mp4", "a red car drives")]
DAMAGED = "my_videos/dog.avi"


def write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    """mpeg4 in AVI: a cut copy still opens (the index is at the end) and decodes until the cut."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """captions.csv, my_videos/ (dog.avi cut at half its bytes), a tokenizer folder and a umt_tiny checkpoint."""
    work = tmp_path_factory.mktemp("damaged_video_cli")
    (work / "captions.csv").write_text("video,caption\n" + "".join(f"{v},{c}\n" for v, c in ROWS))
    videos = work / "my_videos"
    videos.mkdir()
    for seed, (name, _) in enumerate(ROWS):
        frames = np.random.default_rng(seed).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
        (write_avi if name.endswith(".avi") else write_mp4)(videos / name, frames, fps=8)
    data = (work / DAMAGED).read_bytes()
    (work / DAMAGED).write_bytes(data[: len(data) // 2])
    (work / "tokenizer").mkdir()
    (work / "tokenizer" / "vocab.txt").write_text("\n".join(build_vocab(c for _, c in ROWS)))
    torch.manual_seed(0)
    torch.save({"model": create_model("umt_tiny").state_dict()}, work / "umt_tiny.pth")
    return work


def run(script: str, work: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(ROOT / script), "--config", str(CONFIG),
            "--data.init_args.test_annotation=captions.csv", "--data.init_args.video_root=my_videos",
            "--model.init_args.checkpoint=umt_tiny.pth", "--model.init_args.model=umt_tiny",
            "--model.init_args.k_test=2", "--data.init_args.tokenizer=tokenizer", "--data.init_args.num_frames=4",
            "--data.init_args.img_size=64", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
            "--trainer.enable_progress_bar=false", *extra]
    return subprocess.run(argv, check=False, cwd=work, capture_output=True, text=True, timeout=300)


def assert_one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_evaluate_damaged_video_in_a_worker(dataset):
    out = run("evaluate.py", dataset, "--data.init_args.num_workers=1", "--compare=[{method: none}]",
              f"--results={dataset / 'results.json'}")
    line = assert_one_error_line(out)
    assert line.startswith(f"error: {DAMAGED}: damaged video")
    assert "declares 16 frames but only" in line and "skip_errors" in line
    assert "--data.init_args.on_corrupt=keep_decoded" in line  # the way out, as a CLI user types it
    assert not (dataset / "results.json").exists()


@pytest.mark.slow
def test_evaluate_keep_decoded_option(dataset):
    """The option the message names is accepted by the DataModule: the damaged clip is sampled from the frames that
    decoded (a warning names it) and the evaluation finishes."""
    results = dataset / "keep_decoded.json"
    out = run("evaluate.py", dataset, "--data.init_args.num_workers=0", "--compare=[{method: none}]",
              "--data.init_args.on_corrupt=keep_decoded", f"--results={results}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Damaged video {DAMAGED}" in out.stderr + out.stdout
    (row,) = json.loads(results.read_text())["runs"]
    assert "itm/img_r1" in row and not row.get("num_skipped")


@pytest.mark.slow
def test_evaluate_names_skipped_videos(dataset):
    """With skip_errors the damaged clip is skipped, named in each results row and counted under the table."""
    results = dataset / "skipped.json"
    out = run("evaluate.py", dataset, "--data.init_args.num_workers=1", "--data.init_args.skip_errors=true",
              "--compare=[{method: none}, {method: tome, r: [8]}]", f"--results={results}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(results.read_text())["runs"]
    assert len(rows) == 2
    for row in rows:
        (item,) = row["skipped_videos"]
        assert item["video"] == DAMAGED and item["reason"].startswith("damaged video")
    assert f"1 video(s) skipped as unreadable (skip_errors): {DAMAGED}" in out.stdout


@pytest.mark.slow
def test_train_damaged_video(dataset):
    out = run("train.py", dataset, "--data.init_args.num_workers=0", "--data.init_args.train_annotation=captions.csv",
              "--data.init_args.batch_size=3", "--trainer.max_steps=1", "--trainer.enable_checkpointing=false")
    line = assert_one_error_line(out)
    assert line.startswith(f"error: {DAMAGED}: damaged video") and "skip_errors" in line
