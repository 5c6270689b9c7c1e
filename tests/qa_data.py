"""A tiny in-memory QA datamodule and task for QATask tests (random videos, a small vocabulary)."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vidtldr_pl.backbones import create_model
from vidtldr_pl.tasks.qa import QATask
from vidtldr_pl.text import answer_texts, BertWordPieceTokenizer

WORDS = ["what", "is", "the", "man", "doing", "color", "red", "blue", "green", "yes", "no", "dog", "cat", "two",
         "running", "car", "how", "many"]
ANSWERS = ["red", "blue", "green", "yes", "no", "dog", "cat", "two", "running"]
QUESTIONS = ["what is the man doing", "what color is the car", "how many dog", "is the cat running"]


def tokenizer() -> BertWordPieceTokenizer:
    return BertWordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS, flavor="umt")


class _Questions(Dataset):
    def __init__(self, anns: list[dict]) -> None:
        self.anns = anns

    def __len__(self) -> int:
        return len(self.anns)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 + i)
        return {"video": torch.randn(4, 3, 64, 64, generator=g), "question": self.anns[i]["question"], "index": i,
                "answers": [self.anns[i]["answer"]]}


class TinyQAData(pl.LightningDataModule):
    def __init__(self, num_questions: int = 11, batch_size: int = 2) -> None:
        super().__init__()
        self.tok = tokenizer()
        self.batch_size = batch_size
        self.anns = [{"question_id": f"q{i}", "question": QUESTIONS[i % 4], "answer": ANSWERS[(3 * i) % 9],
                      "type": ["what", "count"][i % 2]} for i in range(num_questions)]
        self.answer_list = ANSWERS

    def answer_tokens(self) -> dict:
        return self.tok(answer_texts(self.answer_list), max_length=5)

    def eval_annotations(self, stage: str | None = None) -> list[dict]:
        return self.anns

    def _collate(self, items: list[dict]) -> dict:
        q = self.tok([it["question"] for it in items], max_length=25)
        answers = [a for it in items for a in it["answers"]]
        a = self.tok(answer_texts(answers), max_length=5)
        return {"video": torch.stack([it["video"] for it in items]), "input_ids": q["input_ids"],
                "attention_mask": q["attention_mask"], "index": torch.tensor([it["index"] for it in items]),
                "answer_ids": a["input_ids"], "answer_mask": a["attention_mask"],
                "answer_counts": torch.tensor([len(it["answers"]) for it in items]),
                "answer_weights": torch.ones(len(answers))}

    def _loader(self, shuffle: bool = False) -> DataLoader:
        return DataLoader(_Questions(self.anns), batch_size=self.batch_size, shuffle=shuffle, collate_fn=self._collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()


def make_task(**kw) -> QATask:
    torch.manual_seed(0)
    model = create_model("umt_qa_tiny")
    with torch.no_grad():  # larger weights: answers depend on the question and the video
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith("vision_encoder"):
                p.normal_(0, 0.3)
    return QATask(model=model, k_test=kw.pop("k_test", 4), **kw)


def make_trainer(**kw) -> pl.Trainer:
    kw = {"accelerator": "cpu", "devices": 1, **kw}
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      **kw)
