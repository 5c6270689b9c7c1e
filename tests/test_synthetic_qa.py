"""QA over the synthetic benchmark: questions from the grammar with unique answers, the DataModule, the demo preset."""
import json

import lightning.pytorch as pl
import numpy as np
import pytest

from vidtldr_pl.data_modules.synthetic import SyntheticConfig
from vidtldr_pl.data_modules.synthetic_qa import (QUESTION_TYPES, SyntheticQADataModule, answer_list, ensure_qa_dataset, question,
                                       qa_vocabulary)
from vidtldr_pl.backbones import create_model
from vidtldr_pl.tasks.qa import QATask

OBJECTS = [{"shape": "circle", "colour": "red", "size": "small", "motion": "left"},
           {"shape": "square", "colour": "blue", "size": "large", "motion": "up"}]


@pytest.mark.parametrize(("qtype", "pick", "expected"), [
    ("colour", 0, ("what colour is the circle", "red")),
    ("shape", 1, ("what shape is the blue object", "square")),
    ("direction", 1, ("which way does the blue square move", "up")),
    ("size", 0, ("what size is the red circle", "small")),
    ("count", 0, ("how many objects move", "two")),
])
def test_questions_follow_the_grammar(qtype, pick, expected):
    class Fixed:  # the object picked
        def integers(self, n):
            return pick
    assert question(OBJECTS, qtype, Fixed()) == expected


def test_dataset_questions_are_answerable_and_tokenizable(tmp_path):
    cfg = SyntheticConfig(seed=3, frames=8, size=48)
    out = ensure_qa_dataset(tmp_path, cfg, {"train": 4, "test": 10})
    test = json.loads((out / "anno" / "qa_test_10.json").read_text())
    train = json.loads((out / "anno" / "qa_train_4.json").read_text())
    clips = json.loads((out / "anno" / "test_10.json").read_text())
    assert len(test) == 10 and len(train) == 4 * len(QUESTION_TYPES)
    assert [e["type"] for e in test] == [QUESTION_TYPES[i % 5] for i in range(10)]
    assert len({e["question_id"] for e in test}) == 10 and all(e["answer"] in answer_list() for e in test + train)
    for e, clip in zip(test, clips):  # the answer is a fact of the clip's objects
        facts = {v for o in clip["objects"] for v in o.values() if isinstance(v, str)}
        assert e["answer"] in facts or (e["type"] == "count" and e["answer"] in ("one", "two"))
    words = set(qa_vocabulary())
    assert all(w in words for e in test + train for w in e["question"].split())
    assert len(qa_vocabulary()) <= create_model("umt_qa_demo").cfg.text.vocab_size
    again = ensure_qa_dataset(tmp_path, cfg, {"test": 10})
    assert json.loads((again / "anno" / "qa_test_10.json").read_text()) == test  # deterministic


def test_datamodule_runs_qa_evaluation(tmp_path):
    dm = SyntheticQADataModule(cache_dir=str(tmp_path), seed=1, num_train=0, num_val=0, num_test=5, clip_frames=8,
                               clip_size=48, num_frames=4, img_size=64, eval_batch_size=5, num_workers=0)
    task = QATask(model=create_model("umt_qa_tiny"), k_test=5)
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).test(task, datamodule=dm, verbose=False)
    assert task.results["num_questions"] == 5 and task.results["num_missing"] == 0
    assert {k for k in task.results if k.startswith("acc/")} == {f"acc/{t}" for t in QUESTION_TYPES}
    assert np.isfinite(task.results["gflops"])


def test_mc_entries_hold_the_true_caption_at_the_answer():
    from vidtldr_pl.data_modules.synthetic_qa import mc_entries

    clips = [{"video": f"v{i}.mp4", "caption": f"caption {i % 7}"} for i in range(12)]
    entries = mc_entries(clips, seed=0)
    assert [e["caption"][e["answer"]] for e in entries] == [c["caption"] for c in clips]
    assert all(len(set(e["caption"])) == 5 for e in entries)
    assert len({e["answer"] for e in entries}) > 1 and mc_entries(clips, seed=0) == entries


def test_synthetic_mc_with_a_retrieval_model(tmp_path):
    from vidtldr_pl.data_modules.synthetic_qa import SyntheticMCDataModule
    from vidtldr_pl.tasks.mc import MCTask

    dm = SyntheticMCDataModule(cache_dir=str(tmp_path), seed=2, num_test=6, clip_frames=8, clip_size=48, num_frames=4,
                               img_size=64, eval_batch_size=3, num_workers=0)
    task = MCTask(model=create_model("umt_tiny"))
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).test(task, datamodule=dm, verbose=False)
    assert task.results["num_questions"] == 6 and task.results["num_missing"] == 0
