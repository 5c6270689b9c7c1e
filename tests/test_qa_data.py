"""QA / MC DataModules (UMT / VINDLU JSON), QA + MC evaluation on real small videos, the CLI without data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from vidtldr_pl.data_modules.annotations import AnnotationError
from vidtldr_pl.data_modules.qa import (MSRVTTMCDataModule, MSRVTTQADataModule, MSVDQADataModule, answer_weights,
                             read_answer_list, read_qa_annotations)
from test_data_modules import write_video
from vidtldr_pl.backbones import create_model
from vidtldr_pl.tasks.mc import MCTask, mc_scores
from vidtldr_pl.tasks.qa import QATask
from vidtldr_pl.text import build_vocab

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the man doing?", "what color is the car", "How many dogs (in total)?", "is it running"]
ANSWERS = ["playing", "red", "two", "yes", "no"]


@pytest.fixture()
def root(tmp_path):
    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    anno = root / "anno_downstream"
    anno.mkdir()
    for i in range(4):
        write_video(root / "videos" / f"video{i}.mp4", seed=i)
    test = [{"video": f"video{i}.mp4", "question": q, "answer": ANSWERS[i], "question_id": 100 + i}
            for i, q in enumerate(QUESTIONS)]
    train = [{"video": f"video{i}.mp4", "question": q, "answer": [ANSWERS[i], ANSWERS[i], "no"]}
             for i, q in enumerate(QUESTIONS)]
    mc = [{"video": f"video{i}.mp4", "caption": [f"a man playing {j}" for j in range(5)], "answer": i % 5}
          for i in range(4)]
    for name, data in (("msrvtt_qa_test", test), ("msrvtt_qa_val", test), ("msrvtt_qa_train", train),
                       ("msrvtt_qa_answer_list", ANSWERS), ("msrvtt_mc_test", mc)):
        (anno / f"{name}.json").write_text(json.dumps(data))
    vocab = tmp_path / "tok"
    vocab.mkdir()
    words = QUESTIONS + ANSWERS + ["a man playing 0 1 2 3 4 dogs in total"]
    (vocab / "vocab.txt").write_text("\n".join(build_vocab(words)))
    return root, vocab


def _qa(root, vocab, **kw):
    return MSRVTTQADataModule(str(root), tokenizer=str(vocab), num_frames=4, img_size=64, eval_batch_size=3,
                              batch_size=2, num_workers=0, **kw)


def test_eval_batches_clean_questions_and_tokenize_answers(root):
    root, vocab = root
    dm = _qa(root, vocab)
    dm.setup("test")
    assert dm.answer_list == ANSWERS and [a["question_id"] for a in dm.eval_annotations("test")] == [100, 101, 102, 103]
    batch = next(iter(dm.test_dataloader()))
    assert batch["video"].shape == (3, 4, 3, 64, 64) and batch["input_ids"].shape == (3, 25)
    assert batch["index"].tolist() == [0, 1, 2]
    # official pre_text: lower case, punctuation and brackets removed; "umt" tokenizer: [CLS] pieces, no [SEP]
    assert dm.tokenizer.decode(batch["input_ids"][2]) == "how many dogs in total"
    tok = dm.answer_tokens()
    assert tok["input_ids"].shape == (5, 5)
    assert dm.tokenizer.convert_ids_to_tokens(tok["input_ids"][0][:4]) == ["[CLS]", "playing", "[SEP]", "[PAD]"]


def test_training_batches_weight_repeated_answers(root):
    root, vocab = root
    dm = _qa(root, vocab)
    assert answer_weights(["two", "two", "no"]) == (["two", "no"], [2 / 3, 1 / 3])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["answer_counts"].tolist() == [2, 2]
    assert batch["answer_ids"].shape == (4, 5)
    torch.testing.assert_close(batch["answer_weights"], torch.tensor([2 / 3, 1 / 3, 2 / 3, 1 / 3]))


@pytest.mark.parametrize(("content", "needle"), [
    ([{"video": "a.mp4", "question": "q", "answer": "x"}], "no 'question_id' key"),
    ([{"video": "a.mp4", "question": "q", "answer": ["x"], "question_id": 1}], "key 'answer' must be a string"),
    ({"video": "a.mp4"}, "expected a non-empty JSON list"),
])
def test_malformed_qa_annotations_name_file_entry_and_key(tmp_path, content, needle):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=needle) as err:
        read_qa_annotations(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_answer_list_must_hold_strings(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(["yes", 3]))
    with pytest.raises(AnnotationError, match="entry 1"):
        read_answer_list(path)


def test_missing_data_is_one_short_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="video root not found") as err:
        MSVDQADataModule(str(tmp_path / "msvd")).setup("test")
    assert "\n" not in str(err.value) and "msvd_qa_test.json" in str(err.value)


def test_qa_and_mc_evaluation_on_videos(root):
    root, vocab = root
    dm = _qa(root, vocab)
    task = QATask(model=create_model("umt_qa_tiny"), k_test=3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(task, datamodule=dm, verbose=False)
    assert task.results["num_questions"] == 4 and task.results["num_missing"] == 0
    assert set(task.predictions) == {100, 101, 102, 103} and set(task.predictions.values()) <= set(ANSWERS)
    assert task.results["tokens_per_layer"] == [64, 64, 64, 64]  # every block, no merging

    mc_dm = MSRVTTMCDataModule(str(root), tokenizer=str(vocab), num_frames=4, img_size=64, eval_batch_size=3,
                               num_workers=0)
    mc = MCTask(model=create_model("umt_tiny"))
    trainer.test(mc, datamodule=mc_dm, verbose=False)
    assert mc.results["num_questions"] == 4 and set(mc.predictions) == {0, 1, 2, 3}
    hits = sum(mc.predictions[i] == i % 5 for i in range(4))
    assert mc.results["acc"] == 25.0 * hits


def test_mc_score_is_official_mixture():
    itm = torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])  # match probabilities 0.5 and sigmoid(2)
    itc = torch.tensor([[0.2, 0.1]])
    scores = mc_scores(itm, itc, 0.1)  # ITC softmax over candidates of (0.2, 0.1) / 0.1: (e/(e+1), 1/(e+1))
    e = torch.e
    expected = torch.tensor([[0.7 * 0.5 + 0.3 * e / (e + 1), 0.7 * torch.sigmoid(torch.tensor(2.0)) + 0.3 / (e + 1)]])
    torch.testing.assert_close(scores, expected)


@pytest.mark.slow  # two evaluate.py processes
@pytest.mark.parametrize("override", [[], ["--model.init_args.model=umt_qa_tiny", "--model.init_args.checkpoint=null"]])
def test_evaluate_without_data_or_checkpoint_stops_with_one_line(tmp_path, override):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--config", "msrvtt_qa_umt.yaml", *override],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    # both missing inputs named at once before anything heavy (vidtldr_pl.preflight); without a checkpoint, the data
    assert "data root data/msrvtt" in errors[0] and ("checkpoint file not found" in errors[0]) == (not override)


@pytest.mark.slow
def test_train_py_fine_tunes_qa_with_merging(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""seed_everything: 0
model:
  class_path: vidtldr_pl.tasks.qa.QATask
  init_args: {model: umt_qa_tiny, k_test: 5, lr: 1.0e-3, warmup_epochs: 0}
data:
  class_path: vidtldr_pl.data_modules.synthetic_qa.SyntheticQADataModule
  init_args: {cache_dir: cache, seed: 1, num_train: 4, num_val: 2, num_test: 2, clip_frames: 8, clip_size: 48,
              num_frames: 4, img_size: 64, batch_size: 4, eval_batch_size: 4, num_workers: 0}
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  default_root_dir: out
  callbacks:
    - class_path: vidtldr_pl.callbacks.TokenMerging
      init_args: {method: vidtldr, r: [8, 8]}
""")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(cfg)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "model.text_decoder.cls.predictions.bias" in ckpt["state_dict"] and ckpt["global_step"] == 5
