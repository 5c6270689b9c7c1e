"""The data edges of issues 21 / 22 as a user meets them, through ``python evaluate.py`` in a subprocess: the
documented zero-shot UCF101 command with only a data root, and bad annotation files (empty, header only, a video
path outside the video root) ending in one ``error:`` line naming the file, exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtldr_pl.data_modules.synthetic import write_mp4
from vidtldr_pl.backbones import create_model
from vidtldr_pl.text import build_vocab

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 4


def evaluate(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=400)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0], out.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_documented_zero_shot_command_reads_class_names_under_data_root(tmp_path):
    """configs/ucf101_zs_vificlip.yaml with only --data.init_args.data_root (plus a tiny model for the CPU): the
    class names file the config names is read from the data root, not from the working directory."""
    from vidtldr_pl.backbones import create_model
    from safetensors.torch import save_file

    data = tmp_path / "ucf101"  # the official layout, two classes
    (data / "ucfTrainTestlist").mkdir(parents=True)
    (data / "ucfTrainTestlist" / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (data / "ucfTrainTestlist" / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_a.avi\nArchery/v_b.avi\nArchery/v_c.avi\n")
    (data / "labels").mkdir()
    (data / "labels" / "ucf_101_labels.csv").write_text("id,name\n0,Apply Eye Makeup\n1,Archery\n")
    rng = np.random.default_rng(0)
    for name in ("ApplyEyeMakeup/v_a.avi", "Archery/v_b.avi", "Archery/v_c.avi"):
        (data / "UCF-101" / name).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(data / "UCF-101" / name, rng.integers(0, 256, (12, 40, 48, 3), dtype=np.uint8), fps=8)
    torch.manual_seed(0)
    model = create_model("vificlip_tiny", num_frames=FRAMES)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    work = tmp_path / "elsewhere"  # not the folder above data/: the path must come from data_root
    work.mkdir()
    results = tmp_path / "results.json"
    out = evaluate(work, "--config", str(ROOT / "configs" / "ucf101_zs_vificlip.yaml"),
                   f"--data.init_args.data_root={data}",
                   "--model.init_args.model=vificlip_tiny", f"--model.init_args.checkpoint={tmp_path / 'tiny.safetensors'}",
                   f"--model.init_args.model_overrides={{num_frames: {FRAMES}}}", f"--data.init_args.num_frames={FRAMES}",
                   "--data.init_args.img_size=32", "--data.init_args.num_workers=0", "--trainer.accelerator=cpu",
                   "--trainer.precision=32-true", "--trainer.enable_progress_bar=false", "--compare=[{method: none}]",
                   f"--results={results}")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads(results.read_text())["runs"]
    assert row["num_videos"] == 3 and 0 <= row["top1"] <= 100


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Path:
    """A custom dataset (docs/custom_dataset.md): my_videos/, a tokenizer folder and a umt_tiny checkpoint."""
    work = tmp_path_factory.mktemp("bad_annotations")
    (work / "my_videos").mkdir()
    write_mp4(work / "my_videos" / "cat.mp4", np.zeros((8, 32, 32, 3), np.uint8), fps=8)
    (work / "tokenizer").mkdir()
    (work / "tokenizer" / "vocab.txt").write_text("\n".join(build_vocab(["a cat sleeps"])))
    torch.manual_seed(0)
    torch.save({"model": create_model("umt_tiny").state_dict()}, work / "umt_tiny.pth")
    return work


def run_custom(work: Path, annotation: str) -> subprocess.CompletedProcess:
    return evaluate(work, "--config", str(ROOT / "configs" / "custom_dataset_example.yaml"),
                    f"--data.init_args.test_annotation={annotation}", "--data.init_args.video_root=my_videos",
                    "--model.init_args.checkpoint=umt_tiny.pth", "--model.init_args.model=umt_tiny",
                    "--data.init_args.tokenizer=tokenizer", "--data.init_args.num_frames=4",
                    "--data.init_args.img_size=64", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                    "--trainer.enable_progress_bar=false", "--compare=[{method: none}]")


@pytest.mark.slow
@pytest.mark.parametrize("name,content,needle", [
    ("empty.csv", "", "empty.csv: empty file"),
    ("header.csv", "video,caption\n", "header.csv: no entries"),
    ("up.csv", "video,caption\ncat.mp4,a cat sleeps\n../../etc/passwd,a secret\n",
     "up.csv: entry 1: video path '../../etc/passwd' is outside the video root"),
    ("abs.json", json.dumps([{"video": "/etc/passwd", "caption": "a secret"}]),
     "abs.json: entry 0: video path '/etc/passwd' is outside the video root"),
])
def test_bad_annotation_file_is_one_error_line(custom, name, content, needle):
    (custom / name).write_text(content)
    line = one_error_line(run_custom(custom, name))
    assert line.startswith("error: ") and needle in line, line
