"""The batched ITM re-ranking (many query x candidate pairs per forward, each pair scored once, one intra-op thread)
gives exactly the scores of the earlier per-query path: one forward per query, its candidates' cross-attention keys /
values copied per pair."""
from __future__ import annotations

import math

import pytest
import torch
from retrieval_bruteforce import TinyRetrievalData, make_task, make_trainer

from vidtldr_pl.tasks import RetrievalTask, rerank_scores
from vidtldr_pl.tasks.distributed import row_range
from vidtldr_pl.tasks.retrieval import intra_op_threads


def per_query_rerank(sim_v2t, itm_score, k_test, itm_batch_size=32, video_rows=None, text_rows=None, fill=-100.0):
    """The per-query loop ``rerank_scores`` had before it was batched (verbatim, without the progress bar)."""
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


@pytest.mark.parametrize("k_test,batch", [(3, 1), (3, 4), (5, 32), (40, 7)])
def test_rerank_scores_equals_the_per_query_loop(k_test, batch):
    g = torch.Generator().manual_seed(k_test * 100 + batch)
    sim = (torch.rand(9, 13, generator=g) * 4).round() / 4  # coarse values: many ITC ties
    calls: list[tuple[list[int], list[int]]] = []

    def itm(v, t):
        calls.append((v.tolist(), t.tolist()))
        return (v * 100 + t).float() / 7

    ref = per_query_rerank(sim, lambda v, t: (v * 100 + t).float() / 7, k_test, batch)
    got = rerank_scores(sim, itm, k_test, batch)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    pairs = [(v, t) for vs, ts in calls for v, t in zip(vs, ts)]
    assert len(pairs) == len(set(pairs))  # a pair in both directions' top-k is scored once
    needed = {(v, t) for v in range(9) for t in range(13) if ref[0][v, t] != -100 or ref[1][t, v] != -100}
    assert set(pairs) == needed
    assert all(len(vs) <= batch for vs, _ in calls)
    n_v2t = 9 * min(k_test, 13)
    assert len(calls) == math.ceil(n_v2t / batch) + math.ceil((len(pairs) - n_v2t) / batch)
    # one process's rows of several: the parts still sum to the full matrices
    parts = [rerank_scores(sim, itm, k_test, batch, row_range(9, r, 2), row_range(13, r, 2)) for r in range(2)]
    assert torch.equal(parts[0][0] + parts[1][0], ref[0]) and torch.equal(parts[0][1] + parts[1][1], ref[1])
    assert rerank_scores(sim, itm, k_test, batch, [], [])[0].abs().sum() == 0


def test_rerank_rejects_a_zero_batch():
    with pytest.raises(ValueError, match="itm_batch_size must be >= 1"):
        rerank_scores(torch.zeros(2, 2), lambda v, t: v.float(), 1, 0)


@torch.no_grad()
def _per_query_task_scores(task, dm, itm_batch_size: int, cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's earlier ITM path on the same features: ITC -> per-query loop; cross-attention keys / values from a
    cache of every video (copied per pair), or without it one video's per video query and pairwise otherwise."""
    model = task.model.eval()
    texts = task.encode_texts(dm.eval_texts())
    tokens, itc = [], []
    for start in range(0, dm.num_videos, dm.batch_size):  # the batches of the evaluation loop
        tok, pooled = model.encode_vision(dm.videos[start:start + dm.batch_size])
        tokens.append(tok)
        itc.append(model.vision_embed(pooled))
    tokens, itc = torch.cat(tokens), torch.cat(itc)
    sim = itc @ texts["itc"].t()
    memory = None
    if cache:
        chunks = [model.text_encoder.fusion_memory(tokens[i:i + itm_batch_size])
                  for i in range(0, len(tokens), itm_batch_size)]
        memory = [(torch.cat([c[layer][0] for c in chunks]), torch.cat([c[layer][1] for c in chunks]))
                  for layer in range(len(chunks[0]))]

    def itm_score(v, t):
        if memory is not None:
            pair_memory = [(k[v], val[v]) for k, val in memory]
        elif bool((v == v[0]).all()):
            pair_memory = model.text_encoder.fusion_memory(tokens[v[:1]])
        else:
            return model.itm_logits(texts["hidden"][t], texts["mask"][t], tokens[v])[:, 1]
        return model.itm_logits(texts["hidden"][t], texts["mask"][t], None, memory=pair_memory)[:, 1]

    return per_query_rerank(sim, itm_score, task.k_test, itm_batch_size)


@pytest.mark.parametrize("cache_mb", [2048.0, 0.0])
def test_task_scores_equal_the_per_query_path(cache_mb):
    dm = TinyRetrievalData(num_videos=12, batch_size=4)
    dm.input_ids[12:17] = dm.input_ids[:5]  # caption twins: equal logits whose tie order the metrics depend on
    dm.attention_mask[12:17] = dm.attention_mask[:5]
    threads = torch.get_num_threads()
    results = []
    for itm_threads in (1, None):
        task = make_task(k_test=5, itm_batch_size=7)
        task.hparams.itm_cache_mb = cache_mb
        task.itm_threads = itm_threads
        make_trainer().validate(task, datamodule=dm, verbose=False)
        assert torch.get_num_threads() == threads  # restored after the re-ranking
        results.append(task)
    ref_v2t, ref_t2v = _per_query_task_scores(results[0], dm, 7, cache=cache_mb > 0)
    a, b = ref_v2t[:, :5], ref_v2t[:, 12:17]
    both = (a != -100) & (b != -100)
    assert both.any() and torch.equal(a[both], b[both])
    for task in results:
        assert torch.equal(task.scores["itm_v2t"], ref_v2t)
        assert torch.equal(task.scores["itm_t2v"], ref_t2v)
    assert {k: v for k, v in results[0].results.items() if k != "videos_per_s"} == \
        {k: v for k, v in results[1].results.items() if k != "videos_per_s"}


def test_intra_op_threads_sets_and_restores():
    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with intra_op_threads(None), intra_op_threads(before + 4):
        assert torch.get_num_threads() == before  # never raised above the process's setting
    with pytest.raises(ValueError, match="threads must be >= 1"):
        with intra_op_threads(0):
            pass
    with pytest.raises(ValueError, match="itm_threads must be >= 1"):
        RetrievalTask("umt_tiny", itm_threads=0)


@torch.no_grad()
def test_memory_index_equals_a_copy_per_row():
    from vidtldr_pl.backbones.umt.text import TextEncoderConfig, UMTTextEncoder

    torch.manual_seed(0)
    cfg = TextEncoderConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
                            fusion_layer=1, encoder_width=24, max_position_embeddings=16)
    encoder = UMTTextEncoder(cfg).eval()
    hidden = encoder.forward_text(torch.randint(1, 50, (6, 9)))
    mask = torch.ones(6, 9, dtype=torch.long)
    mask[::2, 5:] = 0
    memory = encoder.fusion_memory(torch.randn(3, 7, 24))
    for index in (torch.tensor([2, 0, 2, 1, 0, 2]), torch.full((6,), 1)):
        copied = [(k[index], v[index]) for k, v in memory]
        expected = encoder.forward_fusion(hidden, mask, None, memory=copied)
        assert torch.equal(encoder.forward_fusion(hidden, mask, None, memory=memory, memory_index=index), expected)
    with pytest.raises(ValueError, match="memory_index must have shape"):
        encoder.forward_fusion(hidden, mask, None, memory=memory, memory_index=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="pass memory too"):
        encoder.forward_fusion(hidden, mask, torch.randn(6, 7, 24), memory_index=torch.zeros(6, dtype=torch.long))
