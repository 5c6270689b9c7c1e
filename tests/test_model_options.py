"""One name for the options of the named model in every task (``model_overrides``); the retrieval / QA / MC tasks'
old name ``vision_overrides`` still works, warning once per process."""
from __future__ import annotations

import inspect
import warnings

import pytest

from vidtldr_pl.tasks import base
from vidtldr_pl.tasks.classification import ClassificationTask
from vidtldr_pl.tasks.mc import MCTask
from vidtldr_pl.tasks.qa import QATask
from vidtldr_pl.tasks.retrieval import RetrievalTask
from vidtldr_pl.tasks.zero_shot import ZeroShotClassificationTask


@pytest.mark.parametrize("task", [RetrievalTask, ClassificationTask, ZeroShotClassificationTask, QATask, MCTask])
def test_every_task_takes_model_overrides(task):
    assert "model_overrides" in inspect.signature(task.__init__).parameters


def test_model_overrides_reach_the_model():
    task = RetrievalTask("umt_tiny", model_overrides={"num_frames": 2})
    assert task.model.vision_encoder.cfg.num_frames == 2


def test_old_name_warns_once_and_still_works(monkeypatch):
    monkeypatch.setattr(base, "_ALIAS_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = RetrievalTask("umt_tiny", vision_overrides={"num_frames": 2})
        second = MCTask("umt_tiny", vision_overrides={"num_frames": 2})
    alias = [w for w in caught if "vision_overrides is now model_overrides" in str(w.message)]
    assert len(alias) == 1
    assert first.model.vision_encoder.cfg.num_frames == 2 == second.model.vision_encoder.cfg.num_frames
    with pytest.raises(ValueError, match="give the model options once"):
        RetrievalTask("umt_tiny", model_overrides={"num_frames": 2}, vision_overrides={"num_frames": 2})
