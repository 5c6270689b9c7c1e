"""Video multiple choice with the UMT retrieval model (official ``tasks/retrieval_mc.py``, MSRVTT-MC).

Score of each of the K candidate captions = 0.7 * softmax(ITM logits)[match] + 0.3 * softmax over the K candidates of
the ITC cosine / temp; prediction = argmax; accuracy = prediction == ``answer``. Predictions of every process are
gathered (each question once) before scoring; a question without a prediction counts as wrong.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import VideoTask
from .distributed import gather_by_index

ITM_WEIGHT, ITC_WEIGHT = 0.7, 0.3


def mc_scores(itm_logits: Tensor, itc_sim: Tensor, temp: Tensor | float) -> Tensor:
    """itm_logits (B, K, 2), itc_sim (B, K) cosines -> official combined scores (B, K)."""
    itm = torch.softmax(itm_logits.float(), dim=-1)[..., 1]
    itc = torch.softmax(itc_sim.float() / temp, dim=1)
    return ITM_WEIGHT * itm + ITC_WEIGHT * itc


class MCTask(VideoTask):
    """Evaluation-only multiple choice (validate / test); the base adds EncoderStats and, never fitting, no
    checkpoint callback.

    Args:
        model: a registered retrieval model name ("umt_b16", ...) or a ``FusionModel`` object
            (``vidtldr_pl.backbones.interfaces``); checkpoint / model_overrides as RetrievalTask.

    ``self.results`` after an epoch: ``acc`` (percent), ``num_questions``, ``num_missing`` + EncoderStats numbers;
    ``self.predictions``: question index -> chosen candidate.
    """

    def __init__(self, model: str | nn.Module = "umt_b16", checkpoint: str | None = None,
                 model_overrides: dict | None = None) -> None:
        super().__init__(model, checkpoint, model_overrides)
        self.predictions: dict[int, int] = {}
        self._reset()

    @torch.no_grad()
    def score(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: video (B, T, 3, H, W), input_ids / attention_mask (B, K, L) -> scores (B, K)."""
        b, k, length = batch["input_ids"].shape
        ids, mask = batch["input_ids"].view(b * k, length), batch["attention_mask"].view(b * k, length)
        tokens, pooled = self.model.encode_vision(batch["video"])
        hidden = self.model.encode_text(ids, mask)
        v = self.model.vision_embed(pooled)  # (B, E)
        t = self.model.text_embed(hidden).view(b, k, -1)
        itc = torch.einsum("be,bke->bk", v, t)
        itm = self.model.itm_logits(hidden, mask, tokens.repeat_interleave(k, dim=0)).view(b, k, 2)
        return mc_scores(itm, itc, self.model.temperature().reshape(()))

    def _reset(self) -> None:
        self._index: list[Tensor] = []
        self._pred: list[Tensor] = []

    def _eval_step(self, batch: dict[str, Tensor]) -> None:
        self._index.append(batch["index"].long().cpu())
        self._pred.append(self.score(batch).argmax(1).long().cpu())

    def _eval_end(self) -> None:
        index = torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.long)
        pred = torch.cat(self._pred) if self._pred else torch.zeros(0, dtype=torch.long)
        index, pred = gather_by_index(index, pred)
        anns = self.trainer.datamodule.eval_annotations()
        self.predictions = dict(zip(index.tolist(), pred.tolist()))
        correct = sum(int(self.predictions.get(i) == a["answer"]) for i, a in enumerate(anns))
        self.results = {"acc": 100.0 * correct / len(anns), "num_questions": len(anns),
                        "num_missing": len(anns) - len(self.predictions)}
        self.log("mc/acc", self.results["acc"], sync_dist=True, reduce_fx="max")
        self._reset()


__all__ = ["MCTask", "mc_scores"]
