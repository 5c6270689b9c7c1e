"""One name for the options of the named model in every task (``model_overrides``); the retrieval / QA / MC tasks'
old name ``vision_overrides`` is refused (one ``error:`` line from evaluate.py)."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from vidtldr_pl.backbones import create_model
from vidtldr_pl.tasks.classification import ClassificationTask
from vidtldr_pl.tasks.mc import MCTask
from vidtldr_pl.tasks.qa import QATask
from vidtldr_pl.tasks.retrieval import RetrievalTask
from vidtldr_pl.tasks.zero_shot import ZeroShotClassificationTask

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task", [RetrievalTask, ClassificationTask, ZeroShotClassificationTask, QATask, MCTask])
def test_every_task_takes_model_overrides(task):
    assert "model_overrides" in inspect.signature(task.__init__).parameters


def test_model_overrides_reach_the_model():
    task = RetrievalTask("umt_tiny", model_overrides={"num_frames": 2})
    assert task.model.vision_encoder.cfg.num_frames == 2


def test_a_model_object_refuses_the_options_of_a_name():
    model = RetrievalTask("umt_tiny").model
    with pytest.raises(ValueError, match="^checkpoint / model_overrides apply to a model name"):
        RetrievalTask(model, model_overrides={"num_frames": 2})
    with pytest.raises(ValueError, match="^checkpoint / pretrained / model_overrides apply to a model name"):
        QATask(create_model("umt_qa_tiny"), checkpoint="qa.pth")


@pytest.mark.parametrize("task", [RetrievalTask, ClassificationTask, ZeroShotClassificationTask, QATask, MCTask])
def test_the_old_name_is_gone(task):
    assert "vision_overrides" not in inspect.signature(task.__init__).parameters


@pytest.mark.parametrize("option", ["--config={old}", "--model.init_args.vision_overrides=null",
                                    "--model.init_args.vision_overrides.num_frames=2"])
def test_evaluate_py_refuses_the_old_name_in_one_line(option, tmp_path):
    """A config (or command line) still using ``vision_overrides``: exit code 2 and one ``error:`` line naming it."""
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  class_path: vidtldr_pl.tasks.RetrievalTask\n"
                   "  init_args: {model: umt_tiny, vision_overrides: {num_frames: 2}}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--config", "demo_umt.yaml",
                           option.format(old=old)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and err.startswith("error: --model.init_args.vision_overrides"), err
    assert "not an option of vidtldr_pl.tasks.RetrievalTask" in err
    if option.startswith("--model"):
        assert err.endswith("(did you mean model_overrides?)")
