"""Brute-force transcription of the official retrieval evaluation (test helper, deliberately plain loops).

Official ``evaluation`` + ``itm_eval`` (tasks/retrieval.py, retrieval_utils.py): one video / one caption / one
pair at a time, no batching. The argsort is numpy's as the official environment (numpy 1.24) orders ties
(``official_argsort``), since ground truths outside the top-k tie at -100.
"""
from __future__ import annotations

import numpy as np
import torch

from vidtldr_pl.metrics.retrieval import official_argsort


@torch.no_grad()
def bruteforce_scores(model, videos: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      k_test: int) -> dict[str, np.ndarray]:
    """videos (Nv, T, 3, H, W), captions (Nt, L) -> ITC (Nv, Nt) and ITM re-ranked v2t (Nv, Nt), t2v (Nt, Nv)."""
    model.eval()
    text_hidden, text_itc = [], []
    for j in range(input_ids.shape[0]):
        h = model.encode_text(input_ids[j:j + 1], attention_mask[j:j + 1])
        text_hidden.append(h)
        text_itc.append(model.text_embed(h)[0])
    video_tokens, video_itc = [], []
    for i in range(videos.shape[0]):
        tokens, pooled = model.encode_vision(videos[i:i + 1])
        video_tokens.append(tokens)
        video_itc.append(model.vision_embed(pooled)[0])
    nv, nt = len(video_itc), len(text_itc)
    itc = np.zeros((nv, nt), dtype=np.float32)
    for i in range(nv):
        for j in range(nt):
            itc[i, j] = float(torch.dot(video_itc[i], text_itc[j]))

    def itm(i: int, j: int) -> float:
        return float(model.itm_logits(text_hidden[j], attention_mask[j:j + 1], video_tokens[i])[0, 1])

    v2t = np.full((nv, nt), -100.0, dtype=np.float32)
    for i in range(nv):
        for j in np.argsort(-itc[i], kind="stable")[:min(k_test, nt)]:
            v2t[i, j] = itm(i, int(j))
    t2v = np.full((nt, nv), -100.0, dtype=np.float32)
    for j in range(nt):
        for i in np.argsort(-itc[:, j], kind="stable")[:min(k_test, nv)]:
            t2v[j, i] = itm(int(i), j)
    return {"itc": itc, "itm_v2t": v2t, "itm_t2v": t2v}


def bruteforce_metrics(scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img, img2txt) -> dict[str, float]:
    """The official ``itm_eval`` loop (unrounded) plus MdR / MnR of the 1-based ranks."""
    ranks = np.zeros(scores_i2t.shape[0])
    for index, score in enumerate(scores_i2t):
        inds = official_argsort(score)[::-1]
        gts = img2txt[index] if isinstance(img2txt[index], list) else [img2txt[index]]
        rank = 1e20
        for i in gts:
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    tr1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    tr5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    tr10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    t_ranks = ranks

    ranks = np.zeros(scores_t2i.shape[0])
    for index, score in enumerate(scores_t2i):
        inds = official_argsort(score)[::-1]
        gts = txt2img[index] if isinstance(txt2img[index], list) else [txt2img[index]]
        rank = 1e20
        for i in gts:
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    ir1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    ir5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    ir10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)

    tr_mean = (tr1 + tr5 + tr10) / 3
    ir_mean = (ir1 + ir5 + ir10) / 3
    return {
        "txt_r1": tr1, "txt_r5": tr5, "txt_r10": tr10, "txt_r_mean": tr_mean,
        "img_r1": ir1, "img_r5": ir5, "img_r10": ir10, "img_r_mean": ir_mean,
        "r_mean": (tr_mean + ir_mean) / 2,
        "txt_MdR": float(np.floor(np.median(t_ranks)) + 1), "txt_MnR": float(np.mean(t_ranks) + 1),
        "img_MdR": float(np.floor(np.median(ranks)) + 1), "img_MnR": float(np.mean(ranks) + 1),
    }


# ----------------------------------------------------------------------------------- deterministic tiny setup
# Shared by the tests and tests/ddp_retrieval_script.py so that every process builds the same model and data.
import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402


def reinit_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-degenerate weights: every >= 2-D weight ~ N(0, 1/fan_in) (the default std 0.02 makes outputs ~equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return model


def make_task(seed: int = 0, k_test: int = 5, itm_batch_size: int = 3, text_batch_size: int = 5):
    from vidtldr_pl.tasks import RetrievalTask

    torch.manual_seed(seed)
    task = RetrievalTask("umt_tiny", k_test=k_test, itm_batch_size=itm_batch_size, text_batch_size=text_batch_size)
    reinit_(task.model, seed)
    return task


class _Videos(Dataset):
    def __init__(self, videos: torch.Tensor) -> None:
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.videos[i], "video_index": i}


class TinyRetrievalData(pl.LightningDataModule):
    """In-memory RetrievalEvalData: random videos (T=4, 64 px); video i has caption i, some videos a second
    caption, and the last caption matches two videos."""

    def __init__(self, num_videos: int = 12, batch_size: int = 4, seed: int = 0, length: int = 12) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + 1000)
        self.videos = torch.randn(num_videos, 4, 3, 64, 64, generator=g)
        self.batch_size = batch_size
        txt2vid: list = list(range(num_videos)) + list(range(0, num_videos, 3)) + [[1, 2]]
        nt = len(txt2vid)
        self.input_ids = torch.randint(2, 128, (nt, length), generator=g)
        self.input_ids[:, 0] = 1  # [CLS]
        lengths = torch.randint(4, length + 1, (nt,), generator=g)
        self.attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
        self.input_ids[self.attention_mask == 0] = 0
        self._txt2vid = txt2vid
        self._vid2txt: list[list[int]] = [[] for _ in range(num_videos)]
        for t, v in enumerate(txt2vid):
            for vv in (v if isinstance(v, list) else [v]):
                self._vid2txt[vv].append(t)

    def eval_texts(self, stage: str | None = None) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    @property
    def txt2vid(self) -> list:
        return self._txt2vid

    @property
    def vid2txt(self) -> list[list[int]]:
        return self._vid2txt

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Videos(self.videos), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def make_trainer(callbacks: list | None = None, **kw) -> pl.Trainer:
    kw = {"accelerator": "cpu", "devices": 1, **kw}
    return pl.Trainer(callbacks=callbacks or [], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)
