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

import bisect
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..backbones.interfaces import FusionModel
from ..errors import IncompleteEvaluationError
from ..merging import find_mergeable
from ..metrics.retrieval import retrieval_metrics
from ..progress import Progress, progress_enabled, track
from .base import VideoTask
from .distributed import all_reduce_sum, gather_by_index, rank_and_world, row_range
from .losses import sample_hard_negatives, vtc_loss, vtm_loss

log = logging.getLogger(__name__)
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
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """ITM re-ranking of the ITC top-k (official protocol), many query x candidate pairs per ``itm_score`` call.

    The video queries come first: their pairs, in query order (each video's texts together), fill calls of
    ``itm_batch_size`` pairs. Then the text queries: a pair already scored for a video query (in both top-k's) is
    reused, the others fill the calls in the same way. The scores equal those of one call per query.

    Args:
        sim_v2t: (Nv, Nt) ITC similarities.
        itm_score: ``itm_score(video_idx (B,), text_idx (B,)) -> (B,)`` ITM match logits of the pairs; a function of
            each pair alone (the same logit whatever else the call holds), since a pair is scored once.
        k_test: candidates re-ranked per query (clipped to the number of candidates).
        itm_batch_size: pairs per ``itm_score`` call (the candidates of several consecutive queries).
        video_rows / text_rows: the query rows this process computes (default: all); other rows stay 0, so that
            partial results of several processes sum to the full matrices.
        fill: score of the entries outside a query's top-k.
        progress: show the progress of each direction in queries (``vidtldr_pl.progress``: a bar on a terminal,
            log lines otherwise, rank 0 only).

    Returns:
        scores_v2t (Nv, Nt) and scores_t2v (Nt, Nv), float32 on ``sim_v2t``'s device: ``fill`` except the top-k
        entries of each computed row, which hold the ITM logit (not combined with ITC).
    """
    if itm_batch_size < 1:
        raise ValueError(f"itm_batch_size must be >= 1, got {itm_batch_size}")
    nv, nt = sim_v2t.shape
    device = sim_v2t.device
    video_rows = list(range(nv) if video_rows is None else video_rows)
    text_rows = list(range(nt) if text_rows is None else text_rows)
    scores_v2t = torch.zeros(nv, nt, dtype=torch.float32, device=device)
    scores_t2v = torch.zeros(nt, nv, dtype=torch.float32, device=device)
    show = progress and progress_enabled()

    # video -> text: every pair of the video queries
    k = min(k_test, nt)
    texts = _top_k(sim_v2t, video_rows, k)  # (Qv, k)
    videos = torch.tensor(video_rows, dtype=torch.long, device=device)[:, None].expand_as(texts)
    with Progress(f"ITM re-ranking, video -> text (top {k})", total=len(video_rows), unit="queries",
                  enabled=show) as bar:
        logits = _score_pairs(videos.flatten(), texts.flatten(), [k] * len(video_rows), itm_score,
                              itm_batch_size, bar)
    scores_v2t[videos[:, 0]] = fill
    scores_v2t[videos, texts] = logits.view_as(texts)
    scored = torch.zeros(nv, nt, dtype=torch.bool, device=device)
    scored[videos, texts] = True

    # text -> video: the pairs no video query scored
    k = min(k_test, nv)
    cands = _top_k(sim_v2t.t(), text_rows, k)  # (Qt, k) video indices
    queries = torch.tensor(text_rows, dtype=torch.long, device=device)[:, None].expand_as(cands)
    reused = scored[cands, queries]
    with Progress(f"ITM re-ranking, text -> video (top {k})", total=len(text_rows), unit="queries",
                  enabled=show) as bar:
        logits = _score_pairs(cands[~reused], queries[~reused], (~reused).sum(1).tolist(), itm_score,
                              itm_batch_size, bar)
    pair_scores = scores_v2t[cands, queries]  # the reused ones (the rest is overwritten)
    pair_scores[~reused] = logits
    scores_t2v[queries[:, 0]] = fill
    scores_t2v[queries, cands] = pair_scores
    return scores_v2t, scores_t2v


def _top_k(sim: Tensor, rows: Sequence[int], k: int) -> Tensor:
    """(len(rows), k) candidate indices of the query rows, row by row as the official ``topk`` (same tie order)."""
    if not rows:
        return torch.zeros(0, k, dtype=torch.long, device=sim.device)
    return torch.stack([sim[q].topk(k).indices for q in rows])


def _score_pairs(videos: Tensor, texts: Tensor, pairs_per_query: Sequence[int], itm_score: ItmScoreFn,
                 batch_size: int, bar: Progress) -> Tensor:
    """ITM logits (P,) float32 of the pairs (P,) (grouped by query, ``pairs_per_query`` each) in calls of
    ``batch_size`` pairs; ``bar`` counts the queries whose pairs are all scored."""
    out = torch.empty(videos.shape[0], dtype=torch.float32, device=videos.device)
    ends = list(itertools.accumulate(pairs_per_query))
    done = 0
    for start in range(0, videos.shape[0], batch_size):
        stop = min(start + batch_size, videos.shape[0])
        out[start:stop] = itm_score(videos[start:stop], texts[start:stop]).float().to(out.device)
        finished = bisect.bisect_right(ends, stop)
        bar.advance(finished - done)
        done = finished
    bar.advance(len(ends) - done)  # queries whose pairs were all reused
    return out


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with at most ``threads`` torch intra-op threads (None: unchanged); restored afterwards."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    before = torch.get_num_threads()
    if threads is None or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fill_missing(index: Tensor, itc: Tensor, tokens: Tensor, num_videos: int) -> tuple[Tensor, Tensor, Tensor]:
    """Insert zero features for the videos absent from ``index`` (sorted, unique): (Nv, ...) in video order."""
    full_itc = itc.new_zeros(num_videos, *itc.shape[1:])
    full_itc[index.to(itc.device)] = itc
    n = tokens.shape[1] if tokens.numel() else 1
    full_tokens = tokens.new_zeros(num_videos, n, tokens.shape[-1])
    if tokens.numel():
        full_tokens[index] = tokens
    return torch.arange(num_videos), full_itc, full_tokens


def _sink_missing(s_v2t: Tensor, s_t2v: Tensor, missing: Sequence[int],
                  vid2txt: Sequence[int | Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Score matrices where each skipped video ranks below everything (t2v) and, as a query, ranks its own captions
    last (v2t): it counts as a miss in both directions, whatever the tie order of the metric."""
    if not missing:
        return s_v2t, s_t2v
    s_v2t, s_t2v = s_v2t.clone(), s_t2v.clone()
    floor = min(float(s_v2t.min()), float(s_t2v.min())) - 2.0
    for v in missing:
        texts = vid2txt[v] if isinstance(vid2txt[v], Sequence) else [vid2txt[v]]
        s_v2t[v] = floor + 1.0
        s_v2t[v, list(texts)] = floor
        s_t2v[:, v] = floor
    return s_v2t, s_t2v


class RetrievalTask(VideoTask):
    """UMT video-text retrieval: fine-tuning (VTC + VTM with hard negatives) and validation / test with the official
    ITC + ITM re-ranking protocol.

    Args:
        model: a registered model name ("umt_b16", "umt_l16", "umt_demo", ...; ``list_models(task="retrieval")``) or a
            model object: a ``DualEncoder`` (``vidtldr_pl.backbones.interfaces``; evaluation ranks by ITC alone and
            reports the ``itc/`` metrics) or a ``FusionModel`` (ITC, then ITM re-ranking).
        checkpoint: checkpoint file (.pth / .safetensors) or ``builtin:<weights>`` for a model name; None.
        k_test: candidates re-ranked by ITM per query (official 128).
        itm_batch_size: pairs per ITM forward (official 32).
        text_batch_size: captions per text-encoder forward (official 256).
        model_overrides: config fields of the named model, e.g. {num_frames: 8, drop_path_rate: 0.1}.
        offload_dtype: dtype of the video tokens kept on CPU ("float16" / "bfloat16" halve their memory; None keeps
            the encoder's dtype). They are cast back when moved to the ITM head; under fp16 autocast ("16-mixed")
            "float16" gives the same scores, since autocast casts them to fp16 in the cross-attention anyway.
        itm_cache_mb: memory (MiB, on the evaluation device) allowed for the cross-attention keys / values of every
            video, computed once instead of once per candidate pair; above it, each ITM forward computes those of
            its distinct videos. 0 disables the cache. Same scores either way.
        itm_threads: torch intra-op threads of the ITM re-ranking on a CPU device (default 1; None keeps torch's
            setting). Its forwards are small (a few thousand rows), and on busy or shared cores the threads of each
            small op mostly wait for one another: one thread per process costs several times less CPU there
            (BENCHMARKS.md, "Retrieval demo: ITM re-ranking cost"). The scores do not depend on it.
        reuse_text_features: keep the encoded captions of an evaluation split until the next training step, so that
            evaluating several merge methods in a row encodes the text once (merging touches only the vision side).
        optimizer: "adamw" (torch) or "deepspeed_cpu_adam" (needed by DeepSpeed ZeRO-Offload, strategy
            deepspeed_stage_3_offload / deepspeed_stage_2_offload).
        lr / weight_decay / betas: AdamW (official: wd 0.02 on weights, none on biases, norms and ``temp``).
        warmup_epochs / min_lr_ratio: per-step schedule, linear warm-up then cosine to ``lr * min_lr_ratio``.
        vtc_weight / vtm_weight: loss weights (official 1 and 1).
        gradient_checkpointing: recompute the vision blocks' attention / MLP in the backward pass (memory for time;
            merging runs outside the recomputed parts).
        save_best / save_every_n_steps: training checkpoints (``configure_callbacks``): the best by validation
            text-to-video R@1 (``itm/img_r1``; ``itc/img_r1`` for a dual encoder) plus ``last.ckpt``; and the latest
            two every N optimizer steps.
        seed: seeds the hard-negative draws (one generator per step and process, so a resumed run draws the same).

    After an evaluation epoch, ``self.results`` holds ``itm/<key>`` and ``itc/<key>`` for the official keys plus
    MdR/MnR (also logged), ``num_videos``, ``num_texts``; the ``EncoderStats`` callback (added by
    ``configure_callbacks`` unless the trainer has one) adds ``tokens_per_layer`` (vision encoder, first batch),
    ``videos_per_s`` (vision encoding throughput of this process, first batch excluded) and ``gflops``.
    In multi-process runs the features are gathered, de-duplicated and sorted by video index, so every video
    counts once and the metrics equal those of one process.
    """

    def __init__(
        self,
        model: str | nn.Module = "umt_b16",
        checkpoint: str | None = None,
        k_test: int = 128,
        itm_batch_size: int = 32,
        text_batch_size: int = 256,
        model_overrides: dict | None = None,
        offload_dtype: str | None = None,
        itm_cache_mb: float = 2048.0,
        itm_threads: int | None = 1,
        reuse_text_features: bool = True,
        lr: float = 1e-5,
        weight_decay: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        vtc_weight: float = 1.0,
        vtm_weight: float = 1.0,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        optimizer: str = "adamw",
        save_best: bool = True,
        save_every_n_steps: int | None = None,
    ) -> None:
        super().__init__(model, checkpoint, model_overrides, gradient_checkpointing)
        self.k_test = k_test
        self.itm_batch_size = itm_batch_size
        if itm_threads is not None and itm_threads < 1:
            raise ValueError(f"itm_threads must be >= 1 or None, got {itm_threads}")
        self.itm_threads = itm_threads
        self.text_batch_size = text_batch_size
        self.offload_dtype = getattr(torch, offload_dtype) if offload_dtype else None
        self.reuse_text_features = reuse_text_features
        self._text_cache: dict[str, tuple[Tensor, dict[str, Tensor]]] = {}
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self._text: dict[str, Tensor] | None = None
        self._video_index: list[Tensor] = []
        self._video_itc: list[Tensor] = []
        self._video_tokens: list[Tensor] = []
        self._token_dtype: torch.dtype | None = None

    def _data(self) -> RetrievalEvalData:
        return self._datamodule(RetrievalEvalData, "eval_texts, txt2vid, vid2txt, num_videos")

    def _autocast(self):
        return self.trainer.precision_plugin.forward_context()

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def encode_texts(self, texts: dict[str, Tensor]) -> dict[str, Tensor]:
        """All captions -> {"hidden": (Nt, L, Dt), "mask": (Nt, L), "itc": (Nt, E)} on this module's device."""
        ids, mask = texts["input_ids"], texts["attention_mask"]
        hidden, itc = [], []
        with Progress("encoding captions", total=ids.shape[0], unit="captions") as bar:
            for start in range(0, ids.shape[0], self.text_batch_size):
                i = ids[start:start + self.text_batch_size].to(self.device)
                m = mask[start:start + self.text_batch_size].to(self.device)
                h = self.model.encode_text(i, m)
                hidden.append(h)
                itc.append(self.model.text_embed(h))
                bar.advance(i.shape[0])
        return {"hidden": torch.cat(hidden), "mask": mask.to(self.device), "itc": torch.cat(itc)}

    def _eval_start(self, stage: str) -> None:
        self._reset()
        texts = self._data().eval_texts(stage)
        cached = self._text_cache.get(stage)
        if cached is not None and torch.equal(cached[0], texts["input_ids"]):
            self._text = cached[1]
            return
        with self._autocast():
            self._text = self.encode_texts(texts)
        self._text_cache = {stage: (texts["input_ids"], self._text)} if self.reuse_text_features else {}

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, Tensor]) -> None:
        video, index = batch["video"], batch["video_index"]
        tokens, pooled = self.model.encode_vision(video)
        if self._video_tokens and tokens.shape[1] != self._video_tokens[0].shape[1] and \
                isinstance(self.model, FusionModel):
            raise ValueError(f"the videos reach the ITM re-ranking with {self._video_tokens[0].shape[1]} and "
                             f"{tokens.shape[1]} tokens: per-video token counts (rlt, threshold mode) are not supported "
                             "with a fusion model's ITM re-ranking yet (its fusion layers take no video mask)")
        itc = self.model.vision_embed(pooled)
        self._video_index.append(index.detach().long().cpu())
        self._video_itc.append(itc.detach())
        self._token_dtype = tokens.dtype
        self._video_tokens.append(tokens.detach().to("cpu", self.offload_dtype or tokens.dtype))  # N' x Dv per video

    @torch.no_grad()
    def _eval_end(self) -> None:
        data = self._data()
        text = self._text
        assert text is not None, "text features missing: evaluation epoch did not start"
        dim_itc = text["itc"].shape[1]
        if self._video_index:
            index, itc, tokens = torch.cat(self._video_index), torch.cat(self._video_itc), torch.cat(self._video_tokens)
        else:  # a rank without samples still takes part in the collectives
            width = find_mergeable(self.model)[0].cfg.embed_dim
            index = torch.zeros(0, dtype=torch.long)
            itc = torch.zeros(0, dim_itc, dtype=text["itc"].dtype, device=self.device)
            tokens = torch.zeros(0, 0, width, dtype=self.offload_dtype or torch.get_default_dtype())
        index, itc, tokens = gather_by_index(index, itc, tokens)
        num_videos = int(data.num_videos)
        missing: list[int] = []
        if index.numel() != num_videos or not torch.equal(index, torch.arange(num_videos)):
            missing = sorted(set(range(num_videos)) - set(index.tolist()))
            if not self._skips_errors():
                raise IncompleteEvaluationError(
                    f"evaluation saw {index.numel()} distinct videos of {num_videos}; missing e.g. {missing[:10]} (the "
                    "protocol needs every video: no limit_val_batches / limit_test_batches)")
            log.warning("%d of %d videos were unreadable and skipped (skip_errors): they rank last and count as "
                        "misses, e.g. %s", len(missing), num_videos, missing[:10])
            index, itc, tokens = _fill_missing(index, itc, tokens, num_videos)

        with self._autocast():  # as official: fp16 cosines under "16-mixed" (their ties matter for the metrics)
            sim_v2t = itc.to(self.device) @ text["itc"].t()  # (Nv, Nt)
        if missing:  # a skipped video is never retrieved and retrieves nothing (see _sink_missing)
            sim_v2t[torch.tensor(missing, device=sim_v2t.device)] = -100.0
        rank, world = rank_and_world()

        token_dtype = self._token_dtype or tokens.dtype

        def video_tokens(v: Tensor) -> Tensor:
            return tokens[v.cpu()].to(self.device, token_dtype, non_blocking=True)

        nv, nt = sim_v2t.shape
        if not isinstance(self.model, FusionModel):  # a dual encoder: ITC ranking only
            self._finish(data, sim_v2t, sim_v2t.t(), sim_v2t, missing, itm=False, embeddings=itc)
            return
        with self._autocast():
            memory = self._fusion_memory_cache(tokens, video_tokens)

        def itm_score(v: Tensor, t: Tensor) -> Tensor:
            # the cross-attention keys / values depend on the video only: each video's are read from the cache
            # (memory_index into all videos, nothing copied) or computed once per call for its distinct videos, and
            # shared by that video's texts
            if memory is not None:
                pair_memory, index = memory, v.to(self.device)
            else:
                videos, index = torch.unique(v.cpu(), return_inverse=True)
                pair_memory, index = self.model.fusion_memory(video_tokens(videos)), index.to(self.device)
            t = t.to(self.device)
            return self.model.itm_logits(text["hidden"][t], text["mask"][t], None, memory=pair_memory,
                                         memory_index=index)[:, 1]

        threads = self.itm_threads if self.device.type == "cpu" else None
        with self._autocast(), intra_op_threads(threads):
            s_v2t, s_t2v = rerank_scores(sim_v2t, itm_score, self.k_test, self.itm_batch_size,
                                         row_range(nv, rank, world), row_range(nt, rank, world),
                                         progress=True)
        s_v2t, s_t2v = all_reduce_sum(s_v2t), all_reduce_sum(s_t2v)
        self._finish(data, s_v2t, s_t2v, sim_v2t, missing, itm=True, embeddings=itc)

    def _finish(self, data: RetrievalEvalData, s_v2t: Tensor, s_t2v: Tensor, sim_v2t: Tensor, missing: list[int],
                itm: bool, embeddings: Tensor | None = None) -> None:
        """Metrics of the re-ranked (``itm/``, when ``itm``) and ITC (``itc/``) matrices into ``self.results``;
        ``missing``: the skipped videos (misses in both directions); ``embeddings``: the video embeddings (Nv, E),
        kept for ``loyalty_outputs``."""
        nv, nt = sim_v2t.shape
        # every rank holds the same matrices, so the metrics are identical on every rank; logging syncs with max
        # (exact, and keeps Lightning from warning about unsynced epoch-level values)
        v2t_gt, t2v_gt = list(data.vid2txt), list(data.txt2vid)
        results: dict[str, Any] = {}
        matrices = [("itm", s_v2t, s_t2v)] if itm else []
        matrices = [(p, *_sink_missing(sv, st, missing, v2t_gt))
                    for p, sv, st in matrices + [("itc", sim_v2t, sim_v2t.t())]]
        for prefix, sv, st in matrices:
            for k, v in retrieval_metrics(sv.cpu(), st.cpu(), v2t_gt, t2v_gt).items():
                results[f"{prefix}/{k}"] = v
        for k, v in results.items():
            self.log(k, v, sync_dist=True, reduce_fx="max")
        results["num_videos"] = nv
        results["num_texts"] = nt
        if missing:
            results["num_skipped"] = len(missing)
        self.results = results
        self.scores = {"itm_v2t": s_v2t.cpu(), "itm_t2v": s_t2v.cpu(), "itc_v2t": sim_v2t.cpu()}
        self._itm_ranked = itm
        self.embeddings = embeddings.detach().float().cpu() if embeddings is not None else None
        self._reset()

    def loyalty_outputs(self) -> dict[str, Tensor] | None:
        """The last evaluation's outputs for ``metrics.loyalty``: ``t2v`` (Nt, Nv) / ``v2t`` (Nv, Nt) the matrices the
        metrics rank by (ITM re-ranked, with ``rerank_k`` = k_test, or ITC), ``sim_v2t`` (Nv, Nt) ITC and
        ``features`` (Nv, E) the video embeddings (zero for a skipped video); None before any evaluation."""
        scores = getattr(self, "scores", None)
        if scores is None:
            return None
        out = {"sim_v2t": scores["itc_v2t"]}
        if self._itm_ranked:
            out.update(t2v=scores["itm_t2v"], v2t=scores["itm_v2t"], rerank_k=torch.tensor(self.k_test))
        else:
            out.update(t2v=scores["itc_v2t"].t(), v2t=scores["itc_v2t"])
        if self.embeddings is not None:
            out["features"] = self.embeddings
        return out

    # ------------------------------------------------------------------ training
    def _gather(self, x: Tensor) -> Tensor | None:
        """(B, ...) -> (world * B, ...) gathered with gradients (official all_gather for VTC); None on one process."""
        if self.trainer.world_size <= 1:
            return None
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """VTC (gathered over processes) + VTM with one hard negative per video and per text (official recipe); a
        dual encoder (not a ``FusionModel``) trains with VTC alone."""
        video, idx = batch["video"], batch["video_index"].long()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        temp = self.model.temperature(clamp=True)  # clamped into its recipe's range first
        tokens, pooled = self.model.encode_vision(video)
        text_hidden = self.model.encode_text(ids, mask)
        vision_feat, text_feat = self.model.vision_embed(pooled), self.model.text_embed(text_hidden)
        loss_vtc = vtc_loss(vision_feat, text_feat, idx, temp,
                            self._gather(vision_feat), self._gather(text_feat), self._gather(idx))
        batch_size = video.shape[0]
        if not isinstance(self.model, FusionModel):
            loss = self.hparams.vtc_weight * loss_vtc
            self.log_dict({"train/loss": loss, "train/vtc": loss_vtc}, prog_bar=True, batch_size=batch_size)
            self.log("train/temp", temp.detach(), batch_size=batch_size)
            return loss

        generator = torch.Generator(device=self.device)
        generator.manual_seed(self._step_seed(batch_idx) + 1)
        video_for_text, text_for_video = sample_hard_negatives(vision_feat, text_feat, idx, temp, generator)
        logits = self.model.itm_logits(
            torch.cat([text_hidden, text_hidden, text_hidden[text_for_video]]),
            torch.cat([mask, mask, mask[text_for_video]]),
            torch.cat([tokens, tokens[video_for_text], tokens]),
        )
        loss_vtm = vtm_loss(logits, video.shape[0])
        loss = self.hparams.vtc_weight * loss_vtc + self.hparams.vtm_weight * loss_vtm
        self.log_dict({"train/loss": loss, "train/vtc": loss_vtc, "train/vtm": loss_vtm}, prog_bar=True,
                      batch_size=batch_size)
        self.log("train/temp", temp.detach(), batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._text_cache = {}  # the text encoder changed

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW without decay on biases, norms and temp; per-step warm-up + cosine (official schedule)."""
        decay, no_decay = self._param_groups()
        h = self.hparams
        groups = [{"params": [p for _, p in decay], "weight_decay": h.weight_decay},
                  {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
        if h.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas))
        elif h.optimizer == "deepspeed_cpu_adam":  # ZeRO-Offload keeps the optimizer step on the CPU
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(groups, lr=h.lr, betas=tuple(h.betas), adamw_mode=True)
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'deepspeed_cpu_adam', got {h.optimizer!r}")
        return self._scheduled(optimizer)

    def _param_groups(self) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
        """(decay, no_decay) named trainable parameters, in the optimizer's order."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append((name, p))
        return decay, no_decay

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume checkpoints written while a parameter that is now (1,) was 0-d (a temperature: DeepSpeed cannot
        partition a 0-d tensor): its saved 0-d AdamW moments become (1,)."""
        decay, no_decay = self._param_groups()
        params = [p for _, p in decay + no_decay]
        for opt in checkpoint.get("optimizer_states", []):
            states = opt.get("state", {}) if isinstance(opt, dict) else {}
            for position, state in states.items():
                if not (isinstance(position, int) and position < len(params) and params[position].shape == (1,)
                        and isinstance(state, dict)):
                    continue
                for key, value in state.items():
                    if key != "step" and isinstance(value, Tensor) and value.ndim == 0:
                        state[key] = value.reshape(1)

    def _fusion_memory_cache(self, tokens: Tensor, video_tokens: Callable[[Tensor], Tensor]) -> list | None:
        """Cross-attention keys / values of every video (per fusion layer, (Nv, H, N', hd) on this device) when they
        fit in ``itm_cache_mb``; None otherwise."""
        nv, n = tokens.shape[:2]
        if nv == 0 or n == 0:
            return None
        itemsize = torch.empty(0, dtype=self._token_dtype or tokens.dtype).element_size()
        size_mb = nv * self.model.fusion_memory_numel(n) * itemsize / 2**20
        if size_mb > self.hparams.itm_cache_mb:
            return None
        starts = range(0, nv, self.itm_batch_size)
        chunks = [self.model.fusion_memory(video_tokens(torch.arange(i, min(i + self.itm_batch_size, nv))))
                  for i in track(starts, "ITM keys / values of the videos", unit="chunks")]
        return [(torch.cat([c[layer][0] for c in chunks]), torch.cat([c[layer][1] for c in chunks]))
                for layer in range(len(chunks[0]))]

    @property
    def checkpoint_monitor(self) -> str:
        """The best checkpoint's metric: text-to-video R@1 after ITM re-ranking (ITC for a dual encoder)."""
        return f"{self._ranking()}/img_r1"

    @property
    def checkpoint_filename(self) -> str:
        return f"best-epoch{{epoch}}-t2v_r1_{{{self._ranking()}/img_r1:.2f}}"

    def _ranking(self) -> str:
        return "itm" if isinstance(self.model, FusionModel) else "itc"
