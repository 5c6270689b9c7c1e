"""Video question answering with UMT-QA (official ``tasks/vqa.py``): answer ranking over a fixed list, exact-match
accuracy, predictions gathered from every process before scoring.

Scoring across processes: the official vid-TLDR evaluation loop scores each process's shard of predictions against
the *full* annotation list (``sync_save_result`` is commented out), so every question answered on another GPU counts
as wrong and a run on G GPUs reports about 1/G of the accuracy. UMT's original code, and this task, gather the
predictions of every process first (each question once) and score the full set on every process: 1 and N processes
give the same accuracy.

YAML::

    model:
      class_path: vidtldr_pl.tasks.qa.QATask
      init_args: {model: umt_qa_b16, checkpoint: qa_msrvtt_b16_25m.pth, k_test: 128}
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .base import VideoTask
from .distributed import gather_by_index


@runtime_checkable
class QAEvalData(Protocol):
    """What the datamodule provides for QA evaluation.

    - ``answer_list``: the candidate answers (strings);
    - ``answer_tokens()``: the tokenized list, ``{"input_ids": (A, La), "attention_mask": (A, La)}``, row 0 column 0
      the BOS ([CLS]);
    - ``eval_annotations(stage)``: the evaluation split of ``stage``, a list of dicts with ``question_id`` and
      ``answer`` (and optionally ``type``, for per-type accuracy).

    Its eval dataloader yields ``{"video": (B, T, 3, H, W), "input_ids" / "attention_mask": (B, Lq) questions,
    "index": (B,) position in eval_annotations(stage)}``.
    """

    @property
    def answer_list(self) -> Sequence[str]: ...

    def answer_tokens(self) -> dict[str, Tensor]: ...

    def eval_annotations(self, stage: str | None = None) -> Sequence[Mapping[str, Any]]: ...


def qa_accuracy(predictions: Mapping[Any, str], annotations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Official ``eval_simple_qa_acc``: exact match of the predicted string and ``answer`` per ``question_id``;
    a question without a prediction counts as wrong. Returns {"acc": percent, "num_questions", "num_missing",
    "acc/<type>": percent per ``type`` when annotations carry one}."""
    correct = missing = 0
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ann in annotations:
        qid = ann["question_id"]
        if qid not in predictions:
            missing += 1
        hit = int(predictions.get(qid) == ann["answer"])
        correct += hit
        if "type" in ann:
            by_type[str(ann["type"])][0] += hit
            by_type[str(ann["type"])][1] += 1
    n = len(annotations)
    out: dict[str, Any] = {"acc": 100.0 * correct / n if n else 0.0, "num_questions": n, "num_missing": missing}
    for t, (c, total) in sorted(by_type.items()):
        out[f"acc/{t}"] = 100.0 * c / total
    return out


class QATask(VideoTask):
    """UMT video QA: fine-tuning (answer LM loss, weighted over several answers) and validation / test by ranking the
    answer list (official ``rank_answer``) with exact-match accuracy.

    Args:
        model: a registered QA model name ("umt_qa_b16", "umt_qa_l16", ...; ``list_models(task="qa")``) or a
            ``VideoQAModel`` object (``vidtldr_pl.backbones.interfaces``).
        checkpoint: official QA file (.pth / .safetensors) for a model name; None.
        pretrained: start fine-tuning from a UMT pretraining / retrieval file (or ``builtin:<weights>``) instead
            (official: the text encoder whole, the answer decoder from the encoder's embeddings, fusion layers and MLM
            head; the model's ``init_from_pretrained``).
        k_test: answers re-scored per question (official 128).
        model_overrides: config fields of the named model (num_frames, drop_path_rate, ...).
        predictions_path: write the predictions of each evaluation (rank 0) as JSON:
            ``[{"question_id", "pred", "answer"}]`` (``answer``: the ground truth).
        lr / weight_decay / betas / warmup_epochs / min_lr_ratio: AdamW (no decay on biases and norms), per-step
            warm-up + cosine as official.
        seed: dropout seeds per step (exact resume); save_best: best-by-accuracy + last checkpoints when fitting.

    After an evaluation epoch ``self.results`` holds ``acc`` (percent), ``num_questions``, ``num_missing`` and
    ``acc/<type>``, plus the ``EncoderStats`` numbers; ``self.predictions`` maps question_id -> predicted answer.
    """

    checkpoint_monitor = "qa/acc"
    checkpoint_filename = "best-epoch{epoch}-acc{qa/acc:.2f}"
    name_only_options = "checkpoint / pretrained / model_overrides"

    def __init__(
        self,
        model: str | nn.Module = "umt_qa_b16",
        checkpoint: str | None = None,
        pretrained: str | None = None,
        k_test: int = 128,
        model_overrides: dict | None = None,
        predictions_path: str | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 0.5,
        min_lr_ratio: float = 0.01,
        seed: int = 0,
        save_best: bool = True,
    ) -> None:
        if pretrained is not None:
            if isinstance(model, nn.Module):
                raise ValueError(f"{self.name_only_options} apply to a model name; load a model object yourself")
            if checkpoint is not None:
                raise ValueError("pass checkpoint (a QA file) or pretrained (a UMT file to fine-tune from), not both")
        super().__init__(model, checkpoint, model_overrides)
        if pretrained is not None:
            self.model.init_from_pretrained(pretrained)
        self.k_test = k_test
        self.predictions: dict[Any, str] = {}
        self._reset()

    def _reset(self) -> None:
        self._index: list[Tensor] = []
        self._pred: list[Tensor] = []
        self._answers: dict[str, Tensor] | None = None

    def _data(self) -> QAEvalData:
        return self._datamodule(QAEvalData, "answer_list, answer_tokens, eval_annotations")

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, stage: str) -> None:
        self._reset()
        tokens = self._data().answer_tokens()
        self._answers = {k: v.to(self.device) for k, v in tokens.items()}

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, Tensor]) -> None:
        assert self._answers is not None
        q_mask = batch["attention_mask"]
        tokens, _ = self.model.encode_vision(batch["video"])
        states = self.model.encode_question(tokens, batch["input_ids"], q_mask)
        ids, _ = self.model.rank_answers(states, q_mask, self._answers["input_ids"], self._answers["attention_mask"],
                                         k=self.k_test)
        self._index.append(batch["index"].detach().long().cpu())
        self._pred.append(ids[:, 0].detach().long().cpu())

    def _eval_end(self) -> None:
        stage = self._stage()
        data = self._data()
        index = torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.long)
        pred = torch.cat(self._pred) if self._pred else torch.zeros(0, dtype=torch.long)
        index, pred = gather_by_index(index, pred)  # every process's predictions, each question once
        annotations = list(data.eval_annotations(stage))
        answers = list(data.answer_list)
        self.predictions = {annotations[i]["question_id"]: answers[p] for i, p in zip(index.tolist(), pred.tolist())}
        results = qa_accuracy(self.predictions, annotations)
        self.log("qa/acc", results["acc"], sync_dist=True, reduce_fx="max")  # equal on every process
        self.results = results
        path = self.hparams.predictions_path
        if path and self.trainer.is_global_zero:
            rows = [{"question_id": a["question_id"], "pred": self.predictions.get(a["question_id"]),
                     "answer": a["answer"]} for a in annotations]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(rows, indent=1))
        self._reset()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Official loss: ``sum(weight * answer NLL) / B`` over every answer of each question.

        batch: "video" (B, T, 3, H, W), "input_ids" / "attention_mask" (B, Lq), "answer_ids" / "answer_mask"
        (A, La), "answer_counts" (B,), "answer_weights" (A,)."""
        tokens, _ = self.model.encode_vision(batch["video"])
        states = self.model.encode_question(tokens, batch["input_ids"], batch["attention_mask"])
        loss = self.model.answer_loss(states, batch["attention_mask"], batch["answer_ids"], batch["answer_mask"],
                                      batch["answer_counts"], batch["answer_weights"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW without decay on biases and norms; per-step warm-up + cosine (official schedule)."""
        h = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        return self._scheduled(torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                                  {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=tuple(h.betas)))


__all__ = ["QAEvalData", "QATask", "qa_accuracy"]
