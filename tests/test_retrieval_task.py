"""RetrievalTask: the official ITC + ITM re-ranking protocol, checked against a brute-force transcription,
with token merging, and across 2 DDP processes (launched as a separate program)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_bruteforce import TinyRetrievalData, bruteforce_metrics, bruteforce_scores, make_task, make_trainer

from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.merging import patch, unpatch
from vidtldr_pl.tasks import RetrievalTask, rerank_scores
from vidtldr_pl.tasks.distributed import dedup_sorted, gather_by_index, row_range

HERE = Path(__file__).resolve().parent
K_TEST = 5


def _validate(callbacks=None, num_videos: int = 12, batch_size: int = 4) -> tuple[RetrievalTask, TinyRetrievalData]:
    task, dm = make_task(k_test=K_TEST), TinyRetrievalData(num_videos=num_videos, batch_size=batch_size)
    make_trainer(callbacks).validate(task, datamodule=dm, verbose=False)
    return task, dm


def _check_against_bruteforce(task: RetrievalTask, dm: TinyRetrievalData) -> None:
    bf = bruteforce_scores(task.model, dm.videos, dm.input_ids, dm.attention_mask, K_TEST)
    np.testing.assert_allclose(task.scores["itc_v2t"].numpy(), bf["itc"], rtol=0, atol=1e-6)
    # same top-k entries (the -100 pattern) and the same ITM logits there
    for key in ("itm_v2t", "itm_t2v"):
        ours = task.scores[key].numpy()
        assert np.array_equal(ours == -100, bf[key] == -100), key
        assert ((ours != -100).sum(1) == K_TEST).all()
        np.testing.assert_allclose(ours, bf[key], rtol=0, atol=1e-6)
    expected = {
        **{f"itm/{k}": v for k, v in bruteforce_metrics(bf["itm_v2t"], bf["itm_t2v"], dm.txt2vid, dm.vid2txt).items()},
        **{f"itc/{k}": v for k, v in bruteforce_metrics(bf["itc"], bf["itc"].T, dm.txt2vid, dm.vid2txt).items()},
    }
    got = {k: task.results[k] for k in expected}
    assert got == expected
    # non-trivial: the top-k cut matters and the metrics are not saturated
    assert 0 < task.results["itm/txt_r1"] < 100 or 0 < task.results["itm/img_r1"] < 100


def test_rerank_scores_pure_function():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
    calls = []

    def itm(v, t):
        calls.append((v.tolist(), t.tolist()))
        return (10 * v + t).float()

    v2t, t2v = rerank_scores(sim, itm, k_test=2, itm_batch_size=1)
    assert v2t.tolist() == [[0.0, -100.0, 2.0], [-100.0, 11.0, 12.0]]
    assert t2v.tolist() == [[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]]
    assert all(len(v) == 1 for v, _ in calls)  # batches of itm_batch_size
    # partial rows (one process of several) sum to the full matrices
    parts = [rerank_scores(sim, itm, 2, 8, row_range(2, r, 2), row_range(3, r, 2)) for r in range(2)]
    assert torch.equal(parts[0][0] + parts[1][0], v2t) and torch.equal(parts[0][1] + parts[1][1], t2v)


def test_dedup_and_gather_without_process_group():
    index = torch.tensor([3, 0, 1, 0, 2, 3])  # DistributedSampler-style repeats
    keep = dedup_sorted(index)
    assert index[keep].tolist() == [0, 1, 2, 3] and keep.tolist() == [1, 2, 4, 0]
    feats = torch.arange(6.0)[:, None]
    idx, f = gather_by_index(index, feats)
    assert idx.tolist() == [0, 1, 2, 3] and f[:, 0].tolist() == [1.0, 2.0, 4.0, 0.0]
    assert [list(row_range(11, r, 2)) for r in range(2)] == [list(range(6)), list(range(6, 11))]


def test_validate_matches_bruteforce():
    task, dm = _validate()
    _check_against_bruteforce(task, dm)
    r = task.results
    assert r["num_videos"] == 12 and r["num_texts"] == len(dm.txt2vid)
    assert r["tokens_per_layer"] == [64, 64, 64, 64] and r["videos_per_s"] > 0
    assert set(task.trainer.callback_metrics) >= {"itm/txt_r1", "itc/img_MnR", "itm/r_mean"}


@pytest.mark.slow  # two validation runs and the brute force (test_validate_matches_bruteforce is the fast one)
def test_validate_with_token_merging_matches_bruteforce():
    task, dm = _validate([TokenMerging("vidtldr", r=[16, 8])])
    assert task.results["tokens_per_layer"] == [48, 40, 40, 40]
    patch(task.model, "vidtldr", r=[16, 8])  # the brute force runs the same merged model
    try:
        _check_against_bruteforce(task, dm)
    finally:
        unpatch(task.model)
    plain, _ = _validate()
    assert plain.results != task.results  # merging did change the features


def test_test_stage_equals_validate_stage():
    task, dm = make_task(k_test=K_TEST), TinyRetrievalData()
    make_trainer().test(task, datamodule=dm, verbose=False)
    val, _ = _validate()
    assert {k: v for k, v in task.results.items() if k != "videos_per_s"} == \
        {k: v for k, v in val.results.items() if k != "videos_per_s"}


def test_batch_size_and_padding_do_not_change_metrics():
    a, _ = _validate(num_videos=11, batch_size=4)
    b, _ = _validate(num_videos=11, batch_size=1)
    keys = [k for k in a.results if k.startswith(("itm/", "itc/"))]
    assert {k: a.results[k] for k in keys} == {k: b.results[k] for k in keys}


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, str(HERE / "ddp_retrieval_script.py"), str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2 and ddp["seen_per_rank"] == [6, 6]  # 11 videos: the sampler repeated one
    single, _ = _validate(num_videos=11, batch_size=2)
    log = proc.stderr[-3000:]
    for key in ("itm_v2t", "itm_t2v", "itc_v2t"):
        np.testing.assert_allclose(np.asarray(ddp["scores"][key]), single.scores[key].numpy(), rtol=0, atol=1e-6,
                                   err_msg=log)
    keys = [k for k in single.results if k.startswith(("itm/", "itc/"))]
    assert {k: ddp["results"][k] for k in keys} == {k: single.results[k] for k in keys}, log
    assert ddp["results"]["tokens_per_layer"] == single.results["tokens_per_layer"]


@pytest.mark.slow  # three validation runs
def test_offload_fp16_tokens_and_missing_videos():
    task, dm = make_task(k_test=K_TEST), TinyRetrievalData()
    task.offload_dtype = torch.float16
    make_trainer().validate(task, datamodule=dm, verbose=False)
    ref, _ = _validate()
    assert task.results["itc/r_mean"] == ref.results["itc/r_mean"]  # ITC does not use the tokens
    np.testing.assert_allclose(task.scores["itm_v2t"].numpy(), ref.scores["itm_v2t"].numpy(), atol=1e-2)
    with pytest.raises(ValueError, match="distinct videos of 12"):
        make_trainer(limit_val_batches=1).validate(make_task(), datamodule=dm, verbose=False)


def test_task_from_yaml():
    import lightning.pytorch as pl
    import yaml
    from jsonargparse import ArgumentParser

    text = """
model:
  class_path: vidtldr_pl.tasks.RetrievalTask
  init_args: {model: umt_tiny, k_test: 7, itm_batch_size: 4, offload_dtype: float16, model_overrides: {num_frames: 2}}
"""
    parser = ArgumentParser()
    parser.add_argument("--model", type=pl.LightningModule)
    task = parser.instantiate(parser.parse_object(yaml.safe_load(text))).model
    assert isinstance(task, RetrievalTask) and task.k_test == 7 and task.itm_batch_size == 4
    assert task.offload_dtype == torch.float16 and task.model.cfg.vision.num_frames == 2
