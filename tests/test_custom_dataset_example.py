"""docs/custom_dataset.md works as written: its CSV layout, the config it shows (which must be
configs/custom_dataset_example.yaml), its evaluate.py command (run verbatim, with a tiny UMT and tiny data swapped in
by extra overrides) and its own-DataModule example (same metrics as the generic DataModule on the same data)."""
from __future__ import annotations

import csv
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vidtldr_pl.data_modules.annotations import read_annotations
from vidtldr_pl.data_modules.synthetic import write_mp4
from vidtldr_pl.backbones import create_model
from vidtldr_pl.text import build_vocab

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "custom_dataset.md"
CONFIG = ROOT / "configs" / "custom_dataset_example.yaml"
MSRVTT_R = [600, 200, 100]
# umt_tiny: 4 blocks, 4 frames x (64 / 16)^2 patches = 64 tokens
TINY_TOKENS, TINY_BLOCKS, TINY_R = 64, 4, [16, 8, 4]
K_TEST = 2  # < 4 videos and 5 texts: the ITM re-ranking cuts


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), flags=re.DOTALL | re.MULTILINE)


def doc_command() -> list[str]:
    (command,) = [c for c in code_blocks("bash") if "evaluate.py" in c]
    return shlex.split(command)


def overrides(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def expected_tokens(r: list[int] | None) -> list[int]:
    counts, n = [], TINY_TOKENS
    for i in range(TINY_BLOCKS):
        n -= (r or [])[i] if i < len(r or []) else 0
        counts.append(n)
    return counts


def test_doc_shows_the_shipped_config_and_its_layout():
    config_text = CONFIG.read_text()
    assert config_text in code_blocks("yaml"), "the config in docs/custom_dataset.md differs from the shipped file"
    cfg = yaml.safe_load(config_text)
    assert cfg["data"]["class_path"] == "vidtldr_pl.data_modules.retrieval.VideoTextRetrievalDataModule"
    assert cfg["model"]["class_path"] == "vidtldr_pl.tasks.RetrievalTask"
    assert cfg["model"]["init_args"]["model"] == "umt_b16"
    assert [(c["name"], c["method"], c.get("r")) for c in cfg["compare"]] == [
        ("no merging", "none", None), ("ToMe", "tome", MSRVTT_R), ("vid-TLDR", "vidtldr", MSRVTT_R)]

    command = doc_command()
    assert command[:4] == ["python", "evaluate.py", "--config", "configs/custom_dataset_example.yaml"]
    args = overrides(command)
    assert set(args) == {"data.init_args.test_annotation", "data.init_args.video_root", "model.init_args.checkpoint"}
    assert args["data.init_args.test_annotation"].endswith(".csv")

    (table,) = code_blocks("csv")
    header = next(csv.reader(io.StringIO(table)))
    data = cfg["data"]["init_args"]
    assert header == [data["video_key"], data["caption_key"]] == ["video", "caption"]


def test_doc_json_and_jsonl_equal_the_csv(tmp_path):
    (table,) = code_blocks("csv")
    (csv_path := tmp_path / "captions.csv").write_text(table)
    grouped = {e.video: e.caption for e in read_annotations(csv_path)}
    (snippet,) = code_blocks("json")
    (json_path := tmp_path / "captions.json").write_text(snippet)
    (jsonl_path := tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(e) for e in json.loads(snippet)))
    for path in (json_path, jsonl_path):
        entries = read_annotations(path)
        assert len(entries) == 2 and all(grouped[e.video] == e.caption for e in entries)
    assert isinstance(grouped["cat.mp4"], list) and len(grouped) == 4  # several rows per video are grouped


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The doc's dataset in a fresh folder and its command run there (plus the tiny-model overrides)."""
    work = tmp_path_factory.mktemp("custom_dataset")
    command = doc_command()
    args = overrides(command)
    (table,) = code_blocks("csv")
    (work / args["data.init_args.test_annotation"]).write_text(table)
    rows = list(csv.DictReader(io.StringIO(table)))
    videos = work / args["data.init_args.video_root"]
    videos.mkdir(parents=True)
    for seed, name in enumerate(dict.fromkeys(row["video"] for row in rows)):
        frames = np.random.default_rng(seed).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
        write_mp4(videos / name, frames, fps=8)
    tokenizer = work / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("\n".join(build_vocab(row["caption"] for row in rows)))
    checkpoint = work / args["model.init_args.checkpoint"]
    checkpoint.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model": create_model("umt_tiny").state_dict()}, checkpoint)

    compare = yaml.safe_load(CONFIG.read_text())["compare"]
    tiny_compare = [{**c, "r": TINY_R} if "r" in c else c for c in compare]
    results = work / "results.json"
    argv = [sys.executable, str(ROOT / "evaluate.py"), *command[2:],
            "--model.init_args.model=umt_tiny", f"--model.init_args.k_test={K_TEST}",
            f"--data.init_args.tokenizer={tokenizer}", "--data.init_args.num_frames=4", "--data.init_args.img_size=64",
            "--data.init_args.num_workers=0", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
            "--trainer.enable_progress_bar=false", f"--compare={json.dumps(tiny_compare)}", f"--results={results}"]
    out = subprocess.run(argv, check=False, cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"work": work, "args": args, "tokenizer": tokenizer, "checkpoint": checkpoint, "stdout": out.stdout,
            "compare": compare, "runs": json.loads(results.read_text())["runs"]}


@pytest.mark.slow
def test_doc_command_evaluates_every_compare_entry(evaluated):
    runs = evaluated["runs"]
    assert [(r["name"], r["method"]) for r in runs] == [(c["name"], c["method"]) for c in evaluated["compare"]]
    assert "RetrievalTask on VideoTextRetrievalDataModule (test split)" in evaluated["stdout"]
    for run in runs:
        assert run["r"] == (TINY_R if run["method"] != "none" else None)
        assert run["num_videos"] == 4 and run["num_texts"] == 5
        metrics = {k: v for k, v in run.items() if k.startswith(("itm/", "itc/"))}
        ranks = {k: v for k, v in metrics.items() if k.endswith(("_MdR", "_MnR"))}  # median / mean rank: 1..5
        recalls = {k: v for k, v in metrics.items() if k not in ranks}  # R@1/5/10 and their means, in %
        assert len(recalls) == 18 and all(0 <= v <= 100 for v in recalls.values()), recalls
        assert len(ranks) == 8 and all(1 <= v <= 5 for v in ranks.values()), ranks
        assert run["tokens_per_layer"] == expected_tokens(run["r"])
    assert runs[0]["tokens_per_layer"] == [TINY_TOKENS] * TINY_BLOCKS
    assert runs[1]["tokens_per_layer"] == runs[2]["tokens_per_layer"] == [48, 40, 36, 36]
    assert runs[1]["gflops"] < runs[0]["gflops"] and runs[2]["gflops"] < runs[0]["gflops"]


@pytest.mark.slow
def test_doc_datamodule_matches_the_generic_one(evaluated, monkeypatch):
    import lightning.pytorch as pl

    from vidtldr_pl.tasks import RetrievalTask
    from vidtldr_pl.tasks.retrieval import RetrievalEvalData

    work, args = evaluated["work"], evaluated["args"]
    (code,) = code_blocks("python")
    (work / "my_data.py").write_text(code)
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.chdir(work)
    import my_data

    (data_yaml,) = [yaml.safe_load(c) for c in code_blocks("yaml") if "my_data." in c]
    assert data_yaml["data"]["class_path"] == "my_data.MyRetrievalData"
    init = data_yaml["data"]["init_args"]
    entries = read_annotations(args["data.init_args.test_annotation"])
    assert init["captions"] == {e.video: e.caption if isinstance(e.caption, list) else [e.caption] for e in entries}
    assert init["video_root"] == args["data.init_args.video_root"]
    dm = my_data.MyRetrievalData(**init, tokenizer=str(evaluated["tokenizer"]), num_frames=4, img_size=64)
    assert isinstance(dm, RetrievalEvalData)
    assert dm.num_videos == 4 and dm.txt2vid == [0, 0, 1, 2, 3] and dm.vid2txt == [[0, 1], [2], [3], [4]]

    task = RetrievalTask(model="umt_tiny", checkpoint=str(evaluated["checkpoint"]), k_test=K_TEST)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=str(work))
    trainer.test(task, datamodule=dm, verbose=False)
    plain = evaluated["runs"][0]
    metrics = {k: v for k, v in task.results.items() if k.startswith(("itm/", "itc/"))}
    assert len(metrics) == 26 and metrics == {k: plain[k] for k in metrics}


def test_doc_error_messages_are_the_real_ones(tmp_path, monkeypatch, caplog):
    """Section 5's table: each message is what the DataModule raises (set-up only: nothing is decoded)."""
    import logging

    from vidtldr_pl.data_modules.annotations import AnnotationError
    from vidtldr_pl.data_modules.retrieval import VideoTextRetrievalDataModule

    doc = DOC.read_text()
    (table,) = code_blocks("csv")
    names = list(dict.fromkeys(row["video"] for row in csv.DictReader(io.StringIO(table))))

    def setup_error(annotation: str, content: str | None, videos: list[str] | None) -> str:
        case = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        case.mkdir()
        monkeypatch.chdir(case)  # the paths in the messages are relative, as in the doc
        if content is not None:
            Path(annotation).write_text(content)
        if videos is not None:
            Path("my_videos").mkdir()
            for name in videos:
                Path("my_videos", name).touch()  # set-up checks existence only
        dm = VideoTextRetrievalDataModule(test_annotation=annotation, video_root="my_videos")
        with pytest.raises((FileNotFoundError, AnnotationError)) as err:
            dm.setup("test")
        return str(err.value)

    lines = table.splitlines()
    empty_cell = "\n".join(lines[:4] + [lines[4].split(",")[0] + ","] + lines[5:]) + "\n"
    cases = [
        (("captions.csv", table, None), "video root not found: my_videos (...)"),
        (("captions.csv", None, names), "annotation file not found: captions.csv (...)"),
        (("captions.csv", table.replace("video,caption", "video,text"), names),
         "captions.csv: missing column(s) ['caption'] (columns: ['video', 'text'])"),
        (("captions.csv", empty_cell, names),
         "captions.csv: entry 3 key 'caption' must be a string or a non-empty list of strings, got None"),
        (("captions.json", '[{"video": "cat.mp4"}]', names), "captions.json: entry 0 has no 'caption' key (keys: ['video'])"),
        (("captions.csv", table, [n for n in names if n != "dog.mp4"]),
         "1 of 4 video files of the test annotation not found under my_videos: my_videos/dog.mp4 (...)"),
    ]
    for setup, shown in cases:
        assert f"`{shown}`" in doc, shown
        message = setup_error(*setup)
        assert message.startswith(shown.removesuffix("(...)")), (message, shown)

    # skip_errors (in the last case folder, without dog.mp4): missing videos are logged (and dropped when loaded)
    dm = VideoTextRetrievalDataModule(test_annotation="captions.csv", video_root="my_videos", skip_errors=True)
    with caplog.at_level(logging.WARNING):
        dm.setup("test")
    assert "not found under my_videos: my_videos/dog.mp4" in caplog.text
