"""Video-text retrieval evaluation of UMT with the official protocol (ITC top-k, ITM re-ranking), in Lightning.

Protocol (official ``tasks/retrieval.py`` / ``retrieval_utils.py``; see ``shared/reference/official_behaviour.md``
section 3): all captions are encoded once per evaluation epoch; every video gives an ITC vector and its token
sequence (kept on CPU); ``sim_v2t = v @ t^T`` (cosine, temperature 1); for each video its top-k texts and for each
text its top-k videos (k = min(k_test, n)) are scored with the ITM head's match logit; the re-ranked matrices hold
-100 everywhere else. Metrics (official keys + MdR/MnR) for the re-ranked (``itm/``) and ITC-only (``itc/``)
matrices.

YAML::

    model:
      class_path: vidtldr_pl.tasks.RetrievalTask
      init_args: {model: umt_b16, checkpoint: ckpt.pth, k_test: 128}
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from torch import Tensor

from ..backbones.umt import create_umt
from ..metrics.retrieval import retrieval_metrics
from .distributed import all_reduce_sum, gather_by_index, rank_and_world, row_range

ItmScoreFn = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class RetrievalEvalData(Protocol):
    """What the datamodule (``trainer.datamodule``) provides for retrieval evaluation.

    - ``eval_texts(stage)``: every caption of the evaluation split of ``stage`` ("validate" / "test"), tokenized:
      ``{"input_ids": (Nt, L) long, "attention_mask": (Nt, L)}``;
    - ``txt2vid``: Nt entries, text i -> its video index (or a list of indices when several videos match);
    - ``vid2txt``: Nv entries, video j -> list of its text indices (or one index);
    - ``num_videos``: Nv.

    Its eval dataloader yields ``{"video": (B, T, 3, H, W) float, "video_index": (B,) long}`` covering every video
    index in ``range(num_videos)`` (in any order, repeats allowed: they are removed).
    """

    def eval_texts(self, stage: str | None = None) -> dict[str, Tensor]: ...

    @property
    def txt2vid(self) -> Sequence[int | Sequence[int]]: ...

    @property
    def vid2txt(self) -> Sequence[int | Sequence[int]]: ...

    @property
    def num_videos(self) -> int: ...


@torch.no_grad()
def rerank_scores(
    sim_v2t: Tensor,
    itm_score: ItmScoreFn,
    k_test: int,
    itm_batch_size: int = 32,
    video_rows: Sequence[int] | None = None,
    text_rows: Sequence[int] | None = None,
    fill: float = -100.0,
) -> tuple[Tensor, Tensor]:
    """ITM re-ranking of the ITC top-k (official protocol).

    Args:
        sim_v2t: (Nv, Nt) ITC similarities.
        itm_score: ``itm_score(video_idx (B,), text_idx (B,)) -> (B,)`` ITM match logits of the pairs.
        k_test: candidates re-ranked per query (clipped to the number of candidates).
        itm_batch_size: pairs per ``itm_score`` call (each call holds the candidates of one query).
        video_rows / text_rows: the query rows this process computes (default: all); other rows stay 0, so that
            partial results of several processes sum to the full matrices.
        fill: score of the entries outside a query's top-k.

    Returns:
        scores_v2t (Nv, Nt) and scores_t2v (Nt, Nv), float32 on ``sim_v2t``'s device: ``fill`` except the top-k
        entries of each computed row, which hold the ITM logit (not combined with ITC).
    """
    nv, nt = sim_v2t.shape
    video_rows = range(nv) if video_rows is None else video_rows
    text_rows = range(nt) if text_rows is None else text_rows
    scores_v2t = torch.zeros(nv, nt, dtype=torch.float32, device=sim_v2t.device)
    scores_t2v = torch.zeros(nt, nv, dtype=torch.float32, device=sim_v2t.device)
    sim_t2v = sim_v2t.t()
    for sim, scores, rows, n_cand, query_is_video in (
        (sim_v2t, scores_v2t, video_rows, nt, True),
        (sim_t2v, scores_t2v, text_rows, nv, False),
    ):
        k = min(k_test, n_cand)
        for q in rows:
            scores[q] = fill
            topk = sim[q].topk(k).indices
            for start in range(0, k, itm_batch_size):
                cand = topk[start:start + itm_batch_size]
                query = torch.full_like(cand, q)
                logit = itm_score(query, cand) if query_is_video else itm_score(cand, query)
                scores[q, cand] = logit.float().to(scores.device)
    return scores_v2t, scores_t2v


class RetrievalTask(pl.LightningModule):
    """UMT video-text retrieval: validation / test with the official ITC + ITM re-ranking protocol.

    Args:
        model: UMT preset ("umt_b16", "umt_l16", "umt_tiny").
        checkpoint: official checkpoint file (.pth / .safetensors) or None.
        k_test: candidates re-ranked by ITM per query (official 128).
        itm_batch_size: pairs per ITM forward (official 32).
        text_batch_size: captions per text-encoder forward (official 256).
        vision_overrides: VisionConfig fields, e.g. {num_frames: 8}.
        offload_dtype: dtype of the video tokens kept on CPU ("float16" / "bfloat16" halve their memory; None keeps
            the encoder's dtype). They are cast back when moved to the ITM head; under fp16 autocast ("16-mixed")
            "float16" gives the same scores, since autocast casts them to fp16 in the cross-attention anyway.

    After an evaluation epoch, ``self.results`` holds ``itm/<key>`` and ``itc/<key>`` for the official keys plus
    MdR/MnR (also logged), ``num_videos``, ``num_texts``, ``tokens_per_layer`` (vision encoder, first batch) and
    ``videos_per_s`` (vision encoding throughput of this process, first batch excluded; None with one batch).
    In multi-process runs the features are gathered, de-duplicated and sorted by video index, so every video
    counts once and the metrics equal those of one process.
    """

    def __init__(
        self,
        model: str = "umt_b16",
        checkpoint: str | None = None,
        k_test: int = 128,
        itm_batch_size: int = 32,
        text_batch_size: int = 256,
        vision_overrides: dict | None = None,
        offload_dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_umt(model, checkpoint=checkpoint, **(vision_overrides or {}))
        self.k_test = k_test
        self.itm_batch_size = itm_batch_size
        self.text_batch_size = text_batch_size
        self.offload_dtype = getattr(torch, offload_dtype) if offload_dtype else None
        self.results: dict[str, Any] = {}
        self.tokens_per_layer: list[int] | None = None
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self._text: dict[str, Tensor] | None = None
        self._video_index: list[Tensor] = []
        self._video_itc: list[Tensor] = []
        self._video_tokens: list[Tensor] = []
        self._encode_time = 0.0
        self._encode_count = 0
        self._batches = 0
        self._token_dtype: torch.dtype | None = None

    def _data(self) -> RetrievalEvalData:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not isinstance(dm, RetrievalEvalData):
            raise TypeError(
                "RetrievalTask needs a datamodule implementing RetrievalEvalData (eval_texts, txt2vid, vid2txt, "
                f"num_videos); got {type(dm).__name__}"
            )
        return dm

    def _autocast(self):
        return self.trainer.precision_plugin.forward_context()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def encode_texts(self, texts: dict[str, Tensor]) -> dict[str, Tensor]:
        """All captions -> {"hidden": (Nt, L, Dt), "mask": (Nt, L), "itc": (Nt, E)} on this module's device."""
        ids, mask = texts["input_ids"], texts["attention_mask"]
        hidden, itc = [], []
        for start in range(0, ids.shape[0], self.text_batch_size):
            i = ids[start:start + self.text_batch_size].to(self.device)
            m = mask[start:start + self.text_batch_size].to(self.device)
            h = self.model.encode_text(i, m)
            hidden.append(h)
            itc.append(self.model.text_embed(h))
        return {"hidden": torch.cat(hidden), "mask": mask.to(self.device), "itc": torch.cat(itc)}

    def _eval_start(self, stage: str) -> None:
        self._reset()
        with self._autocast():
            self._text = self.encode_texts(self._data().eval_texts(stage))

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, Tensor]) -> None:
        video, index = batch["video"], batch["video_index"]
        self._sync()
        t0 = time.perf_counter()
        tokens, pooled, state = self.model.vision_encoder(video.permute(0, 2, 1, 3, 4), return_state=True)
        itc = self.model.vision_embed(pooled)
        self._sync()
        if self._batches == 0:
            self.tokens_per_layer = list(state.tokens_per_layer)
        else:
            self._encode_time += time.perf_counter() - t0
            self._encode_count += video.shape[0]
        self._batches += 1
        self._video_index.append(index.detach().long().cpu())
        self._video_itc.append(itc.detach())
        self._token_dtype = tokens.dtype
        self._video_tokens.append(tokens.detach().to("cpu", self.offload_dtype or tokens.dtype))  # N' x Dv per video

    @torch.no_grad()
    def _eval_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches only: the protocol needs every video
            self._reset()
            return
        data = self._data()
        text = self._text
        assert text is not None, "text features missing: evaluation epoch did not start"
        dim_itc = text["itc"].shape[1]
        if self._video_index:
            index, itc, tokens = torch.cat(self._video_index), torch.cat(self._video_itc), torch.cat(self._video_tokens)
        else:  # a rank without samples still takes part in the collectives
            ref = self.model.cfg.vision
            index = torch.zeros(0, dtype=torch.long)
            itc = torch.zeros(0, dim_itc, dtype=text["itc"].dtype, device=self.device)
            tokens = torch.zeros(0, 0, ref.embed_dim, dtype=self.offload_dtype or torch.get_default_dtype())
        index, itc, tokens = gather_by_index(index, itc, tokens)
        num_videos = int(data.num_videos)
        if index.numel() != num_videos or not torch.equal(index, torch.arange(num_videos)):
            missing = sorted(set(range(num_videos)) - set(index.tolist()))
            raise ValueError(f"evaluation saw {index.numel()} distinct videos of {num_videos}; missing e.g. {missing[:10]} "
                             "(the protocol needs every video: no limit_val_batches / limit_test_batches, no skipped videos)")

        with self._autocast():  # as official: fp16 cosines under "16-mixed" (their ties matter for the metrics)
            sim_v2t = itc.to(self.device) @ text["itc"].t()  # (Nv, Nt)
        rank, world = rank_and_world()

        def itm_score(v: Tensor, t: Tensor) -> Tensor:
            vt = tokens[v.cpu()].to(self.device, self._token_dtype or tokens.dtype, non_blocking=True)
            return self.model.itm_logits(text["hidden"][t], text["mask"][t], vt)[:, 1]

        nv, nt = sim_v2t.shape
        with self._autocast():
            s_v2t, s_t2v = rerank_scores(sim_v2t, itm_score, self.k_test, self.itm_batch_size,
                                         row_range(nv, rank, world), row_range(nt, rank, world))
        s_v2t, s_t2v = all_reduce_sum(s_v2t), all_reduce_sum(s_t2v)

        # every rank holds the same matrices, so the metrics are identical on every rank; logging syncs with max
        # (exact, and keeps Lightning from warning about unsynced epoch-level values)
        v2t_gt, t2v_gt = list(data.vid2txt), list(data.txt2vid)
        results: dict[str, Any] = {}
        for prefix, sv, st in (("itm", s_v2t, s_t2v), ("itc", sim_v2t, sim_v2t.t())):
            for k, v in retrieval_metrics(sv.cpu(), st.cpu(), v2t_gt, t2v_gt).items():
                results[f"{prefix}/{k}"] = v
        for k, v in results.items():
            self.log(k, v, sync_dist=True, reduce_fx="max")
        results["num_videos"] = nv
        results["num_texts"] = nt
        results["tokens_per_layer"] = self.tokens_per_layer
        results["videos_per_s"] = self._encode_count / self._encode_time if self._encode_time > 0 else None
        self.results = results
        self.scores = {"itm_v2t": s_v2t.cpu(), "itm_t2v": s_t2v.cpu(), "itc_v2t": sim_v2t.cpu()}
        self._reset()

    # ------------------------------------------------------------------ Lightning hooks
    def on_validation_epoch_start(self) -> None:
        self._eval_start("validate")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end()

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end()
