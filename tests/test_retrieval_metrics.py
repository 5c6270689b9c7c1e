"""Retrieval metrics vs a line-by-line transcription of the official UMT ``itm_eval``."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vidtldr_pl.metrics import (
    EXTRA_KEYS,
    OFFICIAL_KEYS,
    gt_from_groups,
    gt_from_text_videos,
    gt_from_video_texts,
    itm_eval,
    one_to_one_gt,
    ranks_of_ground_truth,
    readable_metrics,
    retrieval_metrics,
)


# ------------------------------------------------------------------------------- official code, transcribed (loop)
def official_ranks(scores: np.ndarray, gt_map) -> np.ndarray:
    ranks = np.zeros(scores.shape[0])
    for index, score in enumerate(scores):
        inds = np.argsort(score)[::-1]
        gt_ids = gt_map[index]
        if isinstance(gt_ids, int):
            ranks[index] = np.where(inds == gt_ids)[0][0]
        else:
            rank = 1e20
            for i in gt_ids:
                tmp = np.where(inds == i)[0][0]
                if tmp < rank:
                    rank = tmp
            ranks[index] = rank
    return ranks


def official_itm_eval(scores_i2t, scores_t2i, txt2img, img2txt, rounded=True):
    ranks = official_ranks(scores_i2t, img2txt)
    tr1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    tr5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    tr10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    ranks = official_ranks(scores_t2i, txt2img)
    ir1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    ir5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    ir10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    tr_mean = (tr1 + tr5 + tr10) / 3
    ir_mean = (ir1 + ir5 + ir10) / 3
    r_mean = (tr_mean + ir_mean) / 2
    res = {"txt_r1": tr1, "txt_r5": tr5, "txt_r10": tr10, "txt_r_mean": tr_mean,
           "img_r1": ir1, "img_r5": ir5, "img_r10": ir10, "img_r_mean": ir_mean, "r_mean": r_mean}
    return {k: round(v, 2) for k, v in res.items()} if rounded else res


def official_build_data(anno_list, has_multi_vision_gt):
    """Transcription of the official ImgTxtRetEvalDataset.build_data id assignment."""
    txt2img, img2txt = {}, {}
    if has_multi_vision_gt:
        img_id = 0
        for txt_id, ann in enumerate(anno_list):
            txt2img[txt_id] = []
            for _ in ann["image"]:
                txt2img[txt_id].append(img_id)
                img2txt[img_id] = txt_id
                img_id += 1
    else:
        txt_id = 0
        for img_id, ann in enumerate(anno_list):
            img2txt[img_id] = []
            for _ in ann["caption"]:
                img2txt[img_id].append(txt_id)
                txt2img[txt_id] = img_id
                txt_id += 1
    return txt2img, img2txt


# --------------------------------------------------------------------------------------------------------- helpers
def reranked_like(rng, nq, nc, k, dtype=np.float32):
    """Official ITM layout: -100 everywhere, fp16-rounded logits (many ties) at k random entries per row."""
    s = np.full((nq, nc), -100.0, dtype=dtype)
    for q in range(nq):
        idx = rng.choice(nc, size=k, replace=False)
        s[q, idx] = np.round(rng.standard_normal(k) * 2, 1).astype(np.float16).astype(dtype)
    return s


def random_multi_gt(rng, nq, nc, max_gt=4):
    return [sorted(rng.choice(nc, size=int(rng.integers(1, max_gt + 1)), replace=False).tolist()) for _ in range(nq)]


# ---------------------------------------------------------------------------------------------------- rank parity
@pytest.mark.parametrize("seed", range(4))
def test_ranks_integer_scores_many_ties(seed):
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        s = rng.integers(0, 4, size=(41, 67)).astype(dtype)
        gt = [int(x) for x in rng.integers(0, 67, size=41)]
        np.testing.assert_array_equal(ranks_of_ground_truth(s, gt), official_ranks(s, gt))


@pytest.mark.parametrize("seed", range(3))
def test_ranks_minus_100_fill(seed):
    rng = np.random.default_rng(100 + seed)
    s = reranked_like(rng, 150, 300, k=16)
    gt = [int(x) for x in rng.integers(0, 300, size=150)]  # mostly outside the top-k: ties at -100
    gt[:50] = [int(np.argmax(s[q])) for q in range(50)]  # and some inside
    ours = ranks_of_ground_truth(s, gt)
    np.testing.assert_array_equal(ours, official_ranks(s, gt))
    assert ours.dtype == np.int64 and ours.shape == (150,)


@pytest.mark.parametrize("seed", range(3))
def test_ranks_multi_gt(seed):
    rng = np.random.default_rng(200 + seed)
    s = reranked_like(rng, 80, 120, k=20)
    gt = random_multi_gt(rng, 80, 120)
    np.testing.assert_array_equal(ranks_of_ground_truth(s, gt), official_ranks(s, gt))
    s2 = rng.integers(0, 3, size=(80, 120)).astype(np.float32)
    np.testing.assert_array_equal(ranks_of_ground_truth(s2, gt), official_ranks(s2, gt))


def test_ranks_gt_forms_and_inputs():
    rng = np.random.default_rng(7)
    s = rng.integers(0, 5, size=(30, 40)).astype(np.float32)
    gt = [int(x) for x in rng.integers(0, 40, size=30)]
    ref = official_ranks(s, gt)
    np.testing.assert_array_equal(ranks_of_ground_truth(s, np.asarray(gt)), ref)  # 1-D int array
    np.testing.assert_array_equal(ranks_of_ground_truth(s, [[g] for g in gt]), ref)  # singleton lists
    np.testing.assert_array_equal(ranks_of_ground_truth(s, [np.int64(g) for g in gt]), ref)  # numpy ints
    np.testing.assert_array_equal(ranks_of_ground_truth(torch.from_numpy(s), gt), ref)  # tensor
    # float16 / bfloat16 tensors are compared as float32 (integer values: exact)
    np.testing.assert_array_equal(ranks_of_ground_truth(torch.from_numpy(s).half(), gt), ref)
    np.testing.assert_array_equal(ranks_of_ground_truth(torch.from_numpy(s).bfloat16(), gt), ref)
    # non-contiguous (transposed) input, as the official ITC t2v matrix is
    st = np.ascontiguousarray(s.T).T
    np.testing.assert_array_equal(ranks_of_ground_truth(st, gt), ref)


def test_ranks_nan_rows_follow_numpy():
    rng = np.random.default_rng(11)
    s = rng.standard_normal((20, 25)).astype(np.float32)
    s[3, 5] = np.nan
    s[7, :] = np.nan
    s[9, [1, 2, 3]] = np.nan
    gt = [5] * 20
    np.testing.assert_array_equal(ranks_of_ground_truth(s, gt), official_ranks(s, gt))


def test_perfect_and_reversed_rankings():
    n = 50
    perfect = np.eye(n, dtype=np.float32) + 0.01 * np.arange(n, dtype=np.float32)[None, :]
    v2t, t2v = one_to_one_gt(n)
    m = retrieval_metrics(perfect, perfect.T, v2t, t2v)
    for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean"):
        assert m[k] == 100.0
    assert m["txt_MdR"] == m["img_MdR"] == 1.0 and m["txt_MnR"] == m["img_MnR"] == 1.0

    reversed_ = -perfect
    m = retrieval_metrics(reversed_, reversed_.T, v2t, t2v)
    for k in OFFICIAL_KEYS:
        assert m[k] == 0.0
    assert m["txt_MdR"] == m["img_MdR"] == float(n)
    assert m["txt_MnR"] == m["img_MnR"] == float(n)


def test_metric_values_small_example():
    # video->text ranks 0, 1, 5, 12 -> R@1 25, R@5 50, R@10 75; median of 0-based ranks = 3 -> MdR 4; MnR 5.5
    nc = 20
    ranks = [0, 1, 5, 12]
    s = np.zeros((4, nc), dtype=np.float32)
    for q, r in enumerate(ranks):
        s[q] = -np.arange(nc, dtype=np.float32)  # candidate c at position c
        s[q, [0, r]] = s[q, [r, 0]]  # gt 0 at position r
    gt = [0, 0, 0, 0]
    np.testing.assert_array_equal(ranks_of_ground_truth(s, gt), ranks)
    st = np.zeros((nc, 4), dtype=np.float32)
    st[np.arange(nc), np.arange(nc) % 4] = 1.0
    m = retrieval_metrics(s, st, gt, [c % 4 for c in range(nc)])
    assert (m["txt_r1"], m["txt_r5"], m["txt_r10"]) == (25.0, 50.0, 75.0)
    assert m["txt_r_mean"] == pytest.approx(50.0)
    assert m["txt_MdR"] == 4.0 and m["txt_MnR"] == 5.5
    assert m["img_r1"] == 100.0
    assert m["r_mean"] == pytest.approx((50.0 + 100.0) / 2)


def test_mdr_floors_even_median():
    s = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # query 0 rank 0, query 1 rank 1
    m = retrieval_metrics(s, s.T, [0, 0], [0, 1])
    assert m["txt_MdR"] == 1.0  # median 0.5 -> floor 0 -> 1
    assert m["txt_MnR"] == 1.5


@pytest.mark.parametrize("seed", range(3))
def test_full_metrics_match_official(seed):
    rng = np.random.default_rng(300 + seed)
    nv, captions = 60, rng.integers(1, 4, size=60)
    anno = [{"image": f"v{i}", "caption": ["c"] * int(k)} for i, k in enumerate(captions)]
    txt2img, img2txt = official_build_data(anno, has_multi_vision_gt=False)
    nt = len(txt2img)
    s_v2t = reranked_like(rng, nv, nt, k=12)
    s_t2v = reranked_like(rng, nt, nv, k=12)
    v2t_gt, t2v_gt = gt_from_groups(captions)
    ref = official_itm_eval(s_v2t, s_t2v, txt2img, img2txt, rounded=False)
    ours = retrieval_metrics(s_v2t, s_t2v, v2t_gt, t2v_gt)
    assert list(ours)[:9] == list(OFFICIAL_KEYS) and set(ours) == set(OFFICIAL_KEYS) | set(EXTRA_KEYS)
    for k in OFFICIAL_KEYS:
        assert ours[k] == ref[k], k  # same arithmetic, bit-identical
    assert itm_eval(s_v2t, s_t2v, txt2img, img2txt) == official_itm_eval(s_v2t, s_t2v, txt2img, img2txt)
    rounded = retrieval_metrics(s_v2t, s_t2v, v2t_gt, t2v_gt, decimals=2)
    assert {k: rounded[k] for k in OFFICIAL_KEYS} == official_itm_eval(s_v2t, s_t2v, txt2img, img2txt)


def test_multi_vision_gt_matches_official():
    rng = np.random.default_rng(5)
    videos_per_text = rng.integers(1, 5, size=30)
    anno = [{"image": ["v"] * int(k), "caption": "c"} for k in videos_per_text]
    txt2img, img2txt = official_build_data(anno, has_multi_vision_gt=True)
    v2t_gt, t2v_gt = gt_from_groups(videos_per_text, has_multi_vision_gt=True)
    assert t2v_gt == [txt2img[i] for i in range(len(txt2img))]
    assert v2t_gt == [[img2txt[i]] for i in range(len(img2txt))]
    nv, nt = len(img2txt), len(txt2img)
    s_v2t = rng.integers(0, 3, size=(nv, nt)).astype(np.float32)
    s_t2v = rng.integers(0, 3, size=(nt, nv)).astype(np.float32)
    assert itm_eval(s_v2t, s_t2v, txt2img, img2txt) == official_itm_eval(s_v2t, s_t2v, txt2img, img2txt)


def test_gt_helpers():
    assert one_to_one_gt(3) == ([[0], [1], [2]], [[0], [1], [2]])
    v2t, t2v = gt_from_text_videos([0, 0, 1, 2, 2, 2])
    assert v2t == [[0, 1], [2], [3, 4, 5]] and t2v == [[0], [0], [1], [2], [2], [2]]
    v2t, t2v = gt_from_video_texts([1, 0, 1])
    assert v2t == [[1], [0], [1]] and t2v == [[1], [0, 2]]
    assert gt_from_groups([2, 1]) == ([[0, 1], [2]], [[0], [0], [1]])
    with pytest.raises(ValueError, match="video 1 has no text"):
        gt_from_text_videos([0, 2])
    with pytest.raises(ValueError, match="out of range"):
        gt_from_text_videos([0, 3], num_videos=2)
    with pytest.raises(ValueError, match="at least one"):
        gt_from_groups([1, 0])


def test_readable_metrics():
    m = retrieval_metrics(np.eye(3), np.eye(3), *one_to_one_gt(3))
    r = readable_metrics(m)
    assert r["v2t/R@1"] == m["txt_r1"] and r["t2v/R@10"] == m["img_r10"] and r["R_mean"] == m["r_mean"]
    assert r["t2v/MdR"] == m["img_MdR"] and len(r) == len(m)


# ---------------------------------------------------------------------------------------------------------- errors
def test_shape_and_gt_errors():
    s = np.zeros((3, 4), dtype=np.float32)
    v2t, t2v = [0, 1, 2], [0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"scores_t2v has shape \(3, 4\).*expected \(Nt, Nv\) = \(4, 3\)"):
        retrieval_metrics(s, s, v2t, t2v)
    with pytest.raises(ValueError, match="v2t_gt has 2 entries but scores_v2t has 3 video rows"):
        retrieval_metrics(s, s.T, [0, 1], t2v)
    with pytest.raises(ValueError, match="t2v_gt has 3 entries but scores_t2v has 4 text rows"):
        retrieval_metrics(s, s.T, v2t, [0, 1, 2])
    with pytest.raises(ValueError, match="must be 2-D"):
        ranks_of_ground_truth(np.zeros(4), [0])
    with pytest.raises(ValueError, match="gt has 2 entries"):
        ranks_of_ground_truth(s, [0, 1])
    with pytest.raises(ValueError, match=r"gt\[1\] = 4 is out of range for 4 candidates"):
        ranks_of_ground_truth(s, [0, 4, 1])
    with pytest.raises(ValueError, match=r"gt\[0\] = -1 is out of range"):
        ranks_of_ground_truth(s, np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match=r"gt\[2\] is empty"):
        ranks_of_ground_truth(s, [0, [1], []])
    with pytest.raises(ValueError, match="at least one query"):
        ranks_of_ground_truth(np.zeros((0, 4)), [])
    with pytest.raises(TypeError):
        ranks_of_ground_truth(s, [0, 1.5, 2])
    with pytest.raises(TypeError):
        ranks_of_ground_truth([[0.0, 1.0]], [0])


# ----------------------------------------------------------------------------------------------------------- speed
def test_speed_1000():
    rng = np.random.default_rng(0)
    s = reranked_like(rng, 1000, 1000, k=128)
    gt = list(range(1000))  # mostly outside the top-k: the exact (argsort) path for most rows
    v2t, t2v = one_to_one_gt(1000)
    ranks_of_ground_truth(s[:10], gt[:10])  # warm-up
    t0 = time.perf_counter()
    m = retrieval_metrics(s, np.ascontiguousarray(s.T), v2t, t2v)
    assert time.perf_counter() - t0 < 1.0
    ref = official_itm_eval(s, np.ascontiguousarray(s.T), gt, gt, rounded=False)
    assert all(m[k] == ref[k] for k in OFFICIAL_KEYS)


@pytest.mark.slow
def test_speed_5000():
    rng = np.random.default_rng(1)
    n = 5000
    s = rng.standard_normal((n, n)).astype(np.float32)
    s[rng.random((n, n)) < 0.9] = -100.0  # heavy ties, but the ground truth (diagonal) mostly kept
    np.fill_diagonal(s, np.abs(np.diagonal(s)))
    t0 = time.perf_counter()
    m = retrieval_metrics(s, s.T, *one_to_one_gt(n))
    assert time.perf_counter() - t0 < 10.0
    sub = slice(0, 200)
    np.testing.assert_array_equal(ranks_of_ground_truth(s[sub], list(range(200))),
                                  official_ranks(s[sub], list(range(200))))
    assert 0.0 <= m["txt_r1"] <= 100.0
