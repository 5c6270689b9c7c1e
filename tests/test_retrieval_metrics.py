"""Retrieval metrics vs a line-by-line transcription of the official UMT ``itm_eval``.

The official numbers were computed with numpy 1.24.3, whose ``np.argsort`` orders ties differently from the SIMD
argsorts of numpy >= 1.25 / 2.x on 32/64-bit dtypes. The transcription below therefore takes the argsort as a
parameter: ``legacy_argsort`` (numpy < 1.25 order; checked against argsorts recorded with numpy 1.24.3) for the
default ``tie_order="official"``, and the installed ``np.argsort`` for ``tie_order="numpy"``.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import vidtldr_pl.metrics.retrieval as retrieval_mod
from vidtldr_pl.metrics import (
    EXTRA_KEYS,
    OFFICIAL_KEYS,
    gt_from_groups,
    gt_from_text_videos,
    gt_from_video_texts,
    itm_eval,
    official_argsort,
    one_to_one_gt,
    ranks_of_ground_truth,
    readable_metrics,
    retrieval_metrics,
)


# -------------------------------------------------------------------------- numpy 1.24.3 argsort order (golden)
def lcg_values(n: int, mod: int, seed: int) -> list[int]:
    state, out = seed, []
    for _ in range(n):
        state = (1103515245 * state + 12345) % (1 << 31)
        out.append((state >> 16) % mod)
    return out


# np.argsort(np.float32(values)) computed with numpy 1.24.3 (the official environment's numpy)
NP124_LCG_17_3_1 = (
    "8 13 12 9 7 6 16 2 4 3 10 1 15 11 14 5 0 "
)
NP124_LCG_40_4_2 = (
    "0 23 15 25 12 6 20 33 35 7 30 21 27 4 24 1 10 29 26 22 32 39 18 3 38 8 17 13 11 28 9 16 31 5 34 2 36 37 14 19 "
)
NP124_LCG_150_5_3 = (
    "74 38 44 48 51 69 79 80 81 91 26 93 115 119 123 124 125 131 135 137 144 95 23 149 15 13 2 21 84 83 122 121 116 "
    "55 56 57 58 59 113 109 101 99 11 90 22 49 126 24 46 25 145 140 31 32 47 136 134 5 127 41 128 129 130 3 147 85 "
    "1 100 8 103 106 108 138 9 4 133 139 86 0 45 63 16 30 70 67 73 27 28 75 105 42 107 14 62 110 29 40 77 19 54 118 "
    "6 111 43 7 52 37 34 10 39 12 89 20 143 50 142 18 146 33 35 36 141 132 78 120 76 82 148 72 71 87 88 92 94 96 97 "
    "98 68 66 102 65 104 64 112 114 60 117 53 17 61 "
)
NP124_LCG_300_2_4 = (
    "299 118 236 120 235 123 232 128 129 229 228 227 133 134 225 137 224 223 117 221 238 112 88 249 248 91 94 95 96 "
    "99 244 102 103 104 105 107 109 110 111 240 142 143 146 171 207 173 174 205 178 179 180 181 183 184 185 201 188 "
    "191 192 198 170 169 168 208 147 218 216 151 152 153 154 155 86 156 158 214 213 212 211 163 210 166 215 84 97 "
    "195 279 55 268 285 52 51 270 49 48 18 47 45 283 252 58 43 273 21 40 39 38 37 274 23 276 33 32 24 30 28 42 266 "
    "56 8 82 1 81 297 79 78 254 5 6 73 294 60 259 261 280 292 290 67 66 65 263 264 62 262 291 293 281 289 206 288 "
    "296 200 287 209 295 286 282 202 203 284 199 204 251 277 250 253 247 246 255 256 197 245 257 243 258 260 242 "
    "241 278 239 265 267 234 233 231 230 269 226 271 272 220 219 217 275 237 222 0 194 46 50 53 54 57 59 61 63 64 "
    "68 44 69 71 72 74 75 76 77 80 83 85 87 70 89 41 35 2 3 4 7 9 10 11 12 13 14 36 15 17 19 20 22 25 26 27 29 31 "
    "34 16 196 90 93 145 148 298 150 157 159 160 161 162 164 144 165 172 175 176 177 182 186 187 189 190 193 167 92 "
    "141 139 98 100 101 106 108 113 114 115 116 119 140 121 124 125 126 127 130 131 132 135 136 138 122 149 "
)
# a median-of-3 adversary with ties (drives the introsort into its heapsort fallback)
KILLER_VALUES = (
    "0 64 1 64 2 63 3 63 4 62 5 62 6 61 7 61 8 60 9 60 10 59 11 59 12 58 13 58 14 15 99 98 99 98 97 97 96 96 95 95 "
    "94 94 93 93 92 92 91 91 90 90 89 89 88 88 87 87 86 86 85 85 84 84 83 83 82 82 81 81 80 80 79 79 78 78 77 77 76 "
    "76 75 75 74 74 73 73 72 72 71 71 70 70 69 69 68 68 67 67 66 66 65 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 57 57 56 "
    "56 55 55 54 54 53 53 52 52 51 51 50 50 49 49 48 48 47 47 46 46 45 45 44 44 43 43 42 42 41 41 40 40 39 39 38 38 "
    "37 37 36 36 35 35 34 34 33 33 32 32 31 31 30 30 29 29 28 28 27 27 26 26 25 25 24 24 23 23 22 22 21 21 20 20 19 "
    "19 18 18 17 17 16 16 65 15 "
)
NP124_KILLER = (
    "0 99 2 100 4 101 6 102 8 103 10 104 12 105 14 106 16 107 18 108 20 109 22 110 24 111 26 112 28 113 29 199 197 "
    "196 195 194 193 192 191 190 188 189 187 186 184 185 183 182 181 180 178 179 176 177 174 175 172 173 171 170 "
    "168 169 166 167 164 165 163 162 160 161 159 158 156 157 155 154 153 152 151 150 149 148 146 147 145 144 143 "
    "142 140 141 139 138 137 136 135 134 133 132 131 130 129 128 127 126 125 124 123 122 121 120 119 118 117 116 "
    "115 114 27 25 23 21 19 17 15 13 11 9 7 5 3 1 198 98 97 96 95 94 92 93 91 90 89 88 87 86 85 84 83 82 81 80 79 "
    "78 77 76 75 74 73 72 71 70 69 68 67 66 65 64 63 62 60 61 59 58 57 56 55 54 53 52 51 50 49 48 47 46 44 45 43 42 "
    "41 40 39 38 36 37 35 34 33 31 32 30 "
)



def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split()]


def legacy_argsort(row: np.ndarray) -> np.ndarray:
    """Oracle for numpy < 1.25 ``np.argsort``: the pure-Python introsort port on dense ranks (NaN largest)."""
    ranks = np.unique(np.asarray(row), return_inverse=True)[1].reshape(-1)
    return np.asarray(retrieval_mod._legacy_argsort(ranks.tolist()))


# ------------------------------------------------------------------------------- official code, transcribed (loop)
def official_ranks(scores: np.ndarray, gt_map, argsort=legacy_argsort) -> np.ndarray:
    ranks = np.zeros(scores.shape[0])
    for index, score in enumerate(scores):
        inds = argsort(score)[::-1]
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


# ------------------------------------------------------------------------------------------- argsort tie order
GOLDEN = [
    ((17, 3, 1), NP124_LCG_17_3_1),
    ((40, 4, 2), NP124_LCG_40_4_2),
    ((150, 5, 3), NP124_LCG_150_5_3),
    ((300, 2, 4), NP124_LCG_300_2_4),
]


@pytest.mark.parametrize(("case", "expected"), GOLDEN)
def test_official_argsort_matches_numpy_1_24(case, expected):
    values = lcg_values(*case)
    expected = _ints(expected)
    assert retrieval_mod._legacy_argsort(values) == expected
    for dtype in (np.float16, np.float32, np.float64, np.int32):
        assert official_argsort(np.asarray(values, dtype=dtype)).tolist() == expected
    # float scores with the same order (e.g. -100 fills and logits) give the same permutation
    assert official_argsort(np.asarray(values, dtype=np.float32) * 0.37 - 100).tolist() == expected


def test_official_argsort_heapsort_fallback_matches_numpy_1_24():
    values = _ints(KILLER_VALUES)
    assert retrieval_mod._legacy_argsort(values) == _ints(NP124_KILLER)
    assert official_argsort(np.asarray(values, dtype=np.float32)).tolist() == _ints(NP124_KILLER)


def test_official_argsort_python_fallback(monkeypatch):
    # the path taken if a future numpy argsorts uint16 with a SIMD kernel (or a row has > 65536 candidates)
    assert retrieval_mod._uint16_argsort_is_legacy()  # true for numpy <= 2.4 on x86 / arm
    monkeypatch.setattr(retrieval_mod, "_uint16_argsort_is_legacy", lambda: False)
    for case, expected in GOLDEN:
        assert official_argsort(np.asarray(lcg_values(*case), dtype=np.float32)).tolist() == _ints(expected)
    rng = np.random.default_rng(9)
    s = reranked_like(rng, 30, 60, k=10)
    gt = [int(x) for x in rng.integers(0, 60, size=30)]
    np.testing.assert_array_equal(ranks_of_ground_truth(s, gt), official_ranks(s, gt))


def test_official_argsort_nan_and_signed_zero():
    rng = np.random.default_rng(4)
    row = rng.integers(0, 3, size=200).astype(np.float32)
    row[[3, 50, 120]] = np.nan
    row[row == 0] = np.where(rng.random(int((row == 0).sum())) < 0.5, -0.0, 0.0)
    ref = legacy_argsort(row)
    np.testing.assert_array_equal(official_argsort(row), ref)
    assert set(ref[-3:].tolist()) == {3, 50, 120}  # NaNs sort last (first after [::-1]), as numpy does


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


@pytest.mark.parametrize("seed", range(3))
def test_ranks_tie_order_numpy_matches_installed_argsort(seed):
    rng = np.random.default_rng(400 + seed)
    for s in (reranked_like(rng, 60, 150, k=12), rng.integers(0, 3, size=(60, 150)).astype(np.float64),
              rng.integers(0, 3, size=(60, 150)).astype(np.float16)):
        gt = random_multi_gt(rng, 60, 150, max_gt=2)
        np.testing.assert_array_equal(ranks_of_ground_truth(s, gt, tie_order="numpy"),
                                      official_ranks(s, gt, argsort=np.argsort))
    with pytest.raises(ValueError, match="tie_order"):
        ranks_of_ground_truth(s, gt, tie_order="stable")


def test_ranks_gt_forms_and_inputs():
    rng = np.random.default_rng(7)
    s = rng.integers(0, 5, size=(30, 40)).astype(np.float32)
    gt = [int(x) for x in rng.integers(0, 40, size=30)]
    ref = official_ranks(s, gt)
    np.testing.assert_array_equal(ranks_of_ground_truth(s, np.asarray(gt)), ref)  # 1-D int array
    np.testing.assert_array_equal(ranks_of_ground_truth(s, [[g] for g in gt]), ref)  # singleton lists
    np.testing.assert_array_equal(ranks_of_ground_truth(s, [np.int64(g) for g in gt]), ref)  # numpy ints
    np.testing.assert_array_equal(ranks_of_ground_truth(torch.from_numpy(s), gt), ref)  # tensor
    # float16 / bfloat16 tensors (integer values: exact in both); the official tie order ignores the dtype
    np.testing.assert_array_equal(ranks_of_ground_truth(torch.from_numpy(s).half(), gt), ref)
    np.testing.assert_array_equal(ranks_of_ground_truth(torch.from_numpy(s).bfloat16(), gt), ref)
    # non-contiguous (transposed) input, as the official ITC t2v matrix is
    st = np.ascontiguousarray(s.T).T
    np.testing.assert_array_equal(ranks_of_ground_truth(st, gt), ref)


def test_ranks_nan_rows_follow_official():
    rng = np.random.default_rng(11)
    s = rng.standard_normal((20, 25)).astype(np.float32)
    s[3, 5] = np.nan
    s[7, :] = np.nan
    s[9, [1, 2, 3]] = np.nan
    gt = [5] * 20
    np.testing.assert_array_equal(ranks_of_ground_truth(s, gt), official_ranks(s, gt))
    np.testing.assert_array_equal(ranks_of_ground_truth(s, gt, tie_order="numpy"),
                                  official_ranks(s, gt, argsort=np.argsort))


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
    sub = slice(0, 150)  # the pure-Python oracle is slow: check a slice of rows
    np.testing.assert_array_equal(ranks_of_ground_truth(s[sub], gt[sub]), official_ranks(s[sub], gt[sub]))
    assert 0.0 <= m["r_mean"] <= 100.0


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
