"""Video-text retrieval metrics, reproducing the official UMT / vid-TLDR ``itm_eval``.

Official definition (``tasks/retrieval_utils.py``), per query row ``score`` of a score matrix::

    inds = np.argsort(score)[::-1]              # numpy default sort (not stable), reversed
    rank = np.where(inds == gt)[0][0]           # 0-based; with several ground truths, the minimum

``txt_r{1,5,10}`` = 100 * count(rank < K) / N over the video->text rows ("txt" = texts retrieved),
``img_r{1,5,10}`` the same over the text->video rows ("img" = video here), ``*_r_mean`` the mean of the three and
``r_mean`` the mean of the two means.

Ties. The ITM re-ranked matrices are -100 outside each query's top-k and hold fp16 logits inside it, and the ITC
matrices are fp16 cosines, so a ground truth often ties with other candidates; its rank is then whatever position
numpy's unstable argsort gives it. That position depends on the numpy version: numpy < 1.25 (the official
environment pins numpy 1.24.3) argsorts every dtype with the same scalar introsort, while numpy >= 1.25 (AVX-512)
and >= 2.0 (AVX2) use SIMD argsorts for 32/64-bit dtypes that order ties differently. ``tie_order="official"``
(default) reproduces the numpy < 1.25 order on any numpy: a row is replaced by its dense ranks (same comparisons,
NaN = largest, -0.0 == 0.0) stored as uint16, whose argsort is still the scalar introsort (checked once at run time
against a Python port of it, which is used instead if the check fails or a row has > 65536 candidates).
``tie_order="numpy"`` calls the installed ``np.argsort`` on the values as given. Either way, a ground truth that
ties with nothing (and sits in a NaN-free row) is ranked by counting larger scores, which every correct sort agrees
with; only the other rows are sorted.

Extra keys (not official): ``txt_MdR``, ``img_MdR`` = ``floor(median(rank0)) + 1`` and ``txt_MnR``, ``img_MnR`` =
``mean(rank0) + 1``, i.e. median / mean of the 1-based ranks as CLIP4Clip-style papers report them (the floor only
matters for an even number of queries whose two middle ranks differ).
"""
from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

GtEntry = int | Sequence[int]
TieOrder = Literal["official", "numpy"]

OFFICIAL_KEYS: tuple[str, ...] = (
    "txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean",
)
EXTRA_KEYS: tuple[str, ...] = ("txt_MdR", "txt_MnR", "img_MdR", "img_MnR")

# official / extra key -> readable alias (v2t = video->text = official "txt", t2v = text->video = official "img")
READABLE_NAMES: dict[str, str] = {
    "txt_r1": "v2t/R@1", "txt_r5": "v2t/R@5", "txt_r10": "v2t/R@10", "txt_r_mean": "v2t/R_mean",
    "txt_MdR": "v2t/MdR", "txt_MnR": "v2t/MnR",
    "img_r1": "t2v/R@1", "img_r5": "t2v/R@5", "img_r10": "t2v/R@10", "img_r_mean": "t2v/R_mean",
    "img_MdR": "t2v/MdR", "img_MnR": "t2v/MnR",
    "r_mean": "R_mean",
}

# pairs (query, ground truth) compared against their row in blocks of about this many score entries
_BLOCK_ELEMS = 1 << 22


class RetrievalGroundTruth(NamedTuple):
    """Ground-truth maps in both directions (unpack as ``v2t_gt, t2v_gt``).

    ``v2t[i]``: the text indices that match video ``i`` (official ``img2txt``);
    ``t2v[j]``: the video indices that match text ``j`` (official ``txt2img``).
    """

    v2t: list[list[int]]
    t2v: list[list[int]]


# ----------------------------------------------------------------------------------------------------------- inputs
def _to_numpy_scores(scores: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        t = scores.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact; numpy has no bfloat16 (float16 stays float16, as the official ITC matrices)
        arr = t.numpy()
    elif isinstance(scores, np.ndarray):
        arr = scores
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(scores).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (queries, candidates), got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _is_index(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _flatten_gt(
    gt: Sequence[GtEntry], num_queries: int, num_candidates: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(query index, candidate index) for every ground-truth pair, grouped by query in order."""
    if isinstance(gt, (str, bytes)) or not hasattr(gt, "__len__"):
        raise TypeError(f"{name} must be a sequence with one entry per query, got {type(gt).__name__}")
    if isinstance(gt, np.ndarray) and gt.ndim == 1 and gt.dtype.kind in "iu":  # fast path: one GT per query
        if len(gt) != num_queries:
            raise ValueError(f"{name} has {len(gt)} entries but the score matrix has {num_queries} query rows")
        cols = gt.astype(np.int64)
        rows = np.arange(num_queries, dtype=np.int64)
    else:
        if len(gt) != num_queries:
            raise ValueError(f"{name} has {len(gt)} entries but the score matrix has {num_queries} query rows")
        rows_l: list[int] = []
        cols_l: list[int] = []
        for q, entry in enumerate(gt):
            if isinstance(entry, torch.Tensor):
                entry = entry.tolist()
            elif isinstance(entry, np.ndarray):
                entry = entry.tolist()
            if _is_index(entry):
                rows_l.append(q)
                cols_l.append(int(entry))
                continue
            if isinstance(entry, (str, bytes)) or not hasattr(entry, "__iter__"):
                raise TypeError(f"{name}[{q}] = {entry!r} is neither an index nor a sequence of indices")
            n = 0
            for c in entry:
                if not _is_index(c):
                    raise TypeError(f"{name}[{q}] holds {c!r}, which is not an integer index")
                rows_l.append(q)
                cols_l.append(int(c))
                n += 1
            if n == 0:
                raise ValueError(f"{name}[{q}] is empty: every query needs at least one ground truth")
        rows = np.asarray(rows_l, dtype=np.int64)
        cols = np.asarray(cols_l, dtype=np.int64)
    if cols.size and (cols.min() < 0 or cols.max() >= num_candidates):
        bad = int(np.flatnonzero((cols < 0) | (cols >= num_candidates))[0])
        raise ValueError(
            f"{name}[{int(rows[bad])}] = {int(cols[bad])} is out of range for {num_candidates} candidates"
        )
    return rows, cols


# ------------------------------------------------------------------------------------- numpy < 1.25 argsort order
_SMALL_QUICKSORT = 15  # numpy npysort_common.h


def _legacy_aheapsort(v: list, a: list[int], lo: int, n: int) -> None:
    """numpy ``aheapsort_`` on ``a[lo:lo+n]`` (1-based heap over offset ``lo - 1``), in place."""
    off = lo - 1
    for l in range(n >> 1, 0, -1):
        tmp = a[off + l]
        i, j = l, l << 1
        while j <= n:
            if j < n and v[a[off + j]] < v[a[off + j + 1]]:
                j += 1
            if v[tmp] < v[a[off + j]]:
                a[off + i] = a[off + j]
                i, j = j, j + j
            else:
                break
        a[off + i] = tmp
    while n > 1:
        tmp = a[off + n]
        a[off + n] = a[off + 1]
        n -= 1
        i, j = 1, 2
        while j <= n:
            if j < n and v[a[off + j]] < v[a[off + j + 1]]:
                j += 1
            if v[tmp] < v[a[off + j]]:
                a[off + i] = a[off + j]
                i, j = j, j + j
            else:
                break
        a[off + i] = tmp


def _legacy_argsort(v: Sequence) -> list[int]:
    """Pure-Python port of numpy's scalar ``aquicksort_`` (introsort: median-of-3 quicksort, insertion sort below
    16 elements, heapsort past depth 2*floor(log2 n)) -- ``np.argsort`` of numpy < 1.25 for every dtype.

    ``v`` must hold NaN-free, totally ordered values (e.g. dense ranks).
    """
    v = list(v)
    num = len(v)
    a = list(range(num))
    if num < 2:
        return a
    pl, pr = 0, num - 1
    stack: list[tuple[int, int, int]] = []
    cdepth = (num.bit_length() - 1) * 2
    while True:
        if cdepth < 0:
            _legacy_aheapsort(v, a, pl, pr - pl + 1)
        else:
            while pr - pl > _SMALL_QUICKSORT:
                pm = pl + ((pr - pl) >> 1)
                if v[a[pm]] < v[a[pl]]:
                    a[pm], a[pl] = a[pl], a[pm]
                if v[a[pr]] < v[a[pm]]:
                    a[pr], a[pm] = a[pm], a[pr]
                if v[a[pm]] < v[a[pl]]:
                    a[pm], a[pl] = a[pl], a[pm]
                vp = v[a[pm]]
                pi, pj = pl, pr - 1
                a[pm], a[pj] = a[pj], a[pm]
                while True:
                    pi += 1
                    while v[a[pi]] < vp:
                        pi += 1
                    pj -= 1
                    while vp < v[a[pj]]:
                        pj -= 1
                    if pi >= pj:
                        break
                    a[pi], a[pj] = a[pj], a[pi]
                a[pi], a[pr - 1] = a[pr - 1], a[pi]
                cdepth -= 1
                if pi - pl < pr - pi:
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):  # insertion sort
                vi = a[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and vp < v[a[pj - 1]]:
                    a[pj] = a[pj - 1]
                    pj -= 1
                a[pj] = vi
        if not stack:
            return a
        pl, pr, cdepth = stack.pop()


@functools.cache
def _uint16_argsort_is_legacy() -> bool:
    """Whether this numpy still argsorts uint16 with the scalar introsort (no SIMD argsort for 16-bit types)."""
    state = 12345
    for n in (17, 40, 300, 1000):
        vals = []
        for _ in range(n):
            state = (1103515245 * state + 12345) % (1 << 31)
            vals.append((state >> 16) % 4)
        arr = np.asarray(vals, dtype=np.uint16)
        if np.argsort(arr).tolist() != _legacy_argsort(vals):
            return False
    return True


def _dense_ranks(row: np.ndarray) -> np.ndarray:
    """Order-preserving dense ranks of a 1-D row (ties equal, -0.0 == 0.0, all NaNs one largest value)."""
    return np.unique(row, return_inverse=True)[1].reshape(-1)


def official_argsort(row: np.ndarray) -> np.ndarray:
    """``np.argsort(row)`` exactly as numpy < 1.25 (the official environment, numpy 1.24.3) orders it, ties included."""
    ranks = _dense_ranks(np.asarray(row))
    if ranks.size <= 65536 and _uint16_argsort_is_legacy():
        return np.argsort(ranks.astype(np.uint16))
    return np.asarray(_legacy_argsort(ranks.tolist()), dtype=np.intp)


# ------------------------------------------------------------------------------------------------------------ ranks
def ranks_of_ground_truth(
    scores: torch.Tensor | np.ndarray, gt: Sequence[GtEntry], tie_order: TieOrder = "official"
) -> np.ndarray:
    """0-based rank of the best ground truth of every query, exactly as the official ``itm_eval`` loop.

    Args:
        scores: (Nq, Nc) similarity of each query (row) to each candidate (column); higher is better.
            Tensors become numpy arrays of the same dtype (bfloat16 -> float32, exact); arrays are used as given.
        gt: Nq entries, each a candidate index or a non-empty sequence of candidate indices.
        tie_order: ``"official"`` = ties ordered as numpy < 1.25 orders them (the official runs);
            ``"numpy"`` = as the installed numpy's ``np.argsort`` orders them (see the module docstring).

    Returns:
        (Nq,) int64 array: position of the ground truth in ``np.argsort(row)[::-1]``, the minimum over several.
    """
    if tie_order not in ("official", "numpy"):
        raise ValueError(f"tie_order = {tie_order!r}: use 'official' or 'numpy'")
    argsort = official_argsort if tie_order == "official" else np.argsort
    s = _to_numpy_scores(scores, "scores")
    nq, nc = s.shape
    if nq == 0 or nc == 0:
        raise ValueError(f"scores has shape {tuple(s.shape)}: need at least one query and one candidate")
    rows, cols = _flatten_gt(gt, nq, nc, "gt")

    # Fast path: a ground truth that ties with no other entry (and sits in a NaN-free row) is at position
    # count(score > gt score) in any correct descending order.
    row_has_nan = np.isnan(s).any(axis=1) if s.dtype.kind == "f" else np.zeros(nq, dtype=bool)
    pair_rank = np.empty(rows.size, dtype=np.int64)
    needs_sort = np.empty(rows.size, dtype=bool)
    block = max(1, _BLOCK_ELEMS // nc)
    for start in range(0, rows.size, block):
        r = rows[start:start + block]
        sub = s[r]  # (b, Nc)
        g = sub[np.arange(r.size), cols[start:start + block]][:, None]
        pair_rank[start:start + block] = np.count_nonzero(sub > g, axis=1)
        needs_sort[start:start + block] = (np.count_nonzero(sub == g, axis=1) != 1) | row_has_nan[r]

    # Exact path: the argsort itself, on each row that has a tied (or NaN) ground truth.
    if needs_sort.any():
        idx = np.flatnonzero(needs_sort)
        position = np.empty(nc, dtype=np.int64)
        descending_pos = np.arange(nc - 1, -1, -1, dtype=np.int64)  # ascending slot j -> descending position
        prev_row = -1
        for k in idx:  # idx is ordered by row, so each row is sorted once
            q = int(rows[k])
            if q != prev_row:
                position[argsort(s[q])] = descending_pos
                prev_row = q
            pair_rank[k] = position[cols[k]]

    # Minimum over the ground truths of each query (pairs are grouped by query, every query has >= 1).
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return np.minimum.reduceat(pair_rank, starts)


# ---------------------------------------------------------------------------------------------------------- metrics
def _recall(ranks: np.ndarray, k: int) -> float:
    # same arithmetic as official: 100.0 * len(np.where(ranks < K)[0]) / len(ranks)
    return 100.0 * int(np.count_nonzero(ranks < k)) / len(ranks)


def _direction_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    r1, r5, r10 = _recall(ranks, 1), _recall(ranks, 5), _recall(ranks, 10)
    return {
        f"{prefix}_r1": r1,
        f"{prefix}_r5": r5,
        f"{prefix}_r10": r10,
        f"{prefix}_r_mean": (r1 + r5 + r10) / 3,
        f"{prefix}_MdR": float(np.floor(np.median(ranks)) + 1),
        f"{prefix}_MnR": float(np.mean(ranks) + 1),
    }


def retrieval_metrics(
    scores_v2t: torch.Tensor | np.ndarray,
    scores_t2v: torch.Tensor | np.ndarray,
    v2t_gt: Sequence[GtEntry],
    t2v_gt: Sequence[GtEntry],
    decimals: int | None = None,
    tie_order: TieOrder = "official",
) -> dict[str, float]:
    """Official ``itm_eval`` metrics plus median / mean rank.

    Args:
        scores_v2t: (Nv, Nt) video->text scores (official ``scores_i2t``).
        scores_t2v: (Nt, Nv) text->video scores (official ``scores_t2i``; often, but not necessarily, the transpose).
        v2t_gt: Nv entries, the matching text index / indices of each video (official ``img2txt``).
        t2v_gt: Nt entries, the matching video index / indices of each text (official ``txt2img``).
        decimals: round every value like the official report (``round(v, 2)``); None keeps full precision.
        tie_order: how tied scores are ordered, see :func:`ranks_of_ground_truth`.

    Returns:
        ``txt_r1, txt_r5, txt_r10, txt_r_mean, img_r1, img_r5, img_r10, img_r_mean, r_mean`` (percent; "txt" =
        video->text, "img" = text->video) and ``txt_MdR, txt_MnR, img_MdR, img_MnR`` (1-based ranks, see module
        docstring). Use :func:`readable_metrics` for ``v2t/R@1``-style names.
    """
    sv = _to_numpy_scores(scores_v2t, "scores_v2t")
    st = _to_numpy_scores(scores_t2v, "scores_t2v")
    if st.shape != sv.shape[::-1]:
        raise ValueError(
            f"scores_t2v has shape {tuple(st.shape)} but scores_v2t has shape {tuple(sv.shape)}: "
            f"expected (Nt, Nv) = {tuple(sv.shape[::-1])}"
        )
    if len(v2t_gt) != sv.shape[0]:
        raise ValueError(f"v2t_gt has {len(v2t_gt)} entries but scores_v2t has {sv.shape[0]} video rows")
    if len(t2v_gt) != st.shape[0]:
        raise ValueError(f"t2v_gt has {len(t2v_gt)} entries but scores_t2v has {st.shape[0]} text rows")
    txt = _direction_metrics(ranks_of_ground_truth(sv, v2t_gt, tie_order), "txt")
    img = _direction_metrics(ranks_of_ground_truth(st, t2v_gt, tie_order), "img")
    out = {k: (txt if k.startswith("txt") else img)[k] for k in OFFICIAL_KEYS if k != "r_mean"}
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    out = {k: out[k] for k in OFFICIAL_KEYS}
    for k in EXTRA_KEYS:
        out[k] = (txt if k.startswith("txt") else img)[k]
    if decimals is not None:
        out = {k: round(v, decimals) for k, v in out.items()}
    return out


def itm_eval(
    scores_i2t: torch.Tensor | np.ndarray,
    scores_t2i: torch.Tensor | np.ndarray,
    txt2img: Sequence[GtEntry] | Mapping[int, GtEntry],
    img2txt: Sequence[GtEntry] | Mapping[int, GtEntry],
) -> dict[str, float]:
    """Drop-in for the official ``itm_eval`` (same argument order, same 9 keys, rounded to 2 decimals).

    ``txt2img`` / ``img2txt`` may be dicts keyed 0..N-1 as in the official datasets.
    """
    def as_list(m: Sequence[GtEntry] | Mapping[int, GtEntry], n: int, name: str) -> Sequence[GtEntry]:
        if isinstance(m, Mapping):
            missing = [i for i in range(n) if i not in m]
            if missing:
                raise ValueError(f"{name} has no entry for query {missing[0]}")
            return [m[i] for i in range(n)]
        return m

    nv = len(scores_i2t)
    nt = len(scores_t2i)
    res = retrieval_metrics(scores_i2t, scores_t2i, as_list(img2txt, nv, "img2txt"), as_list(txt2img, nt, "txt2img"))
    return {k: round(res[k], 2) for k in OFFICIAL_KEYS}


def readable_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Rename official keys to ``v2t/R@1``, ``t2v/MdR``, ``R_mean``...; unknown keys are kept as they are."""
    return {READABLE_NAMES.get(k, k): v for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------------- ground truth
def one_to_one_gt(n: int) -> RetrievalGroundTruth:
    """Video i <-> text i (MSRVTT-1k, LSMDC, paragraph datasets): ``v2t[i] = t2v[i] = [i]``."""
    if n <= 0:
        raise ValueError(f"n = {n}: need at least one pair")
    return RetrievalGroundTruth([[i] for i in range(n)], [[i] for i in range(n)])


def gt_from_text_videos(video_of_text: Sequence[int], num_videos: int | None = None) -> RetrievalGroundTruth:
    """Several captions per video (MSVD): ``video_of_text[j]`` = the video of text j.

    ``num_videos`` defaults to ``max + 1``; every video must have at least one text.
    """
    return _gt_from_owner(video_of_text, num_videos, owner="video", member="text", flip=False)


def gt_from_video_texts(text_of_video: Sequence[int], num_texts: int | None = None) -> RetrievalGroundTruth:
    """Several videos per text (SSv2 ``has_multi_vision_gt``): ``text_of_video[i]`` = the text of video i."""
    return _gt_from_owner(text_of_video, num_texts, owner="text", member="video", flip=True)


def _gt_from_owner(owner_of: Sequence[int], num_owners: int | None, owner: str, member: str,
                   flip: bool) -> RetrievalGroundTruth:
    own = [int(o) for o in owner_of]
    if not own:
        raise ValueError(f"no {member}s given")
    n = max(own) + 1 if num_owners is None else int(num_owners)
    groups: list[list[int]] = [[] for _ in range(n)]
    for m, o in enumerate(own):
        if not 0 <= o < n:
            raise ValueError(f"{member} {m} belongs to {owner} {o}, out of range for {n} {owner}s")
        groups[o].append(m)
    empty = [o for o, g in enumerate(groups) if not g]
    if empty:
        raise ValueError(f"{owner} {empty[0]} has no {member} ({len(empty)} {owner}(s) without any)")
    per_member = [[o] for o in own]
    return RetrievalGroundTruth(per_member, groups) if flip else RetrievalGroundTruth(groups, per_member)


def gt_from_groups(group_sizes: Sequence[int], has_multi_vision_gt: bool = False) -> RetrievalGroundTruth:
    """Ids as the official ``build_data`` assigns them from an annotation list, in order.

    Without ``has_multi_vision_gt`` entry i is one video with ``group_sizes[i]`` captions (texts numbered
    consecutively); with it, entry i is one caption with ``group_sizes[i]`` videos (videos numbered consecutively).
    """
    owner_of: list[int] = []
    for i, k in enumerate(group_sizes):
        if int(k) < 1:
            raise ValueError(f"group_sizes[{i}] = {k}: every annotation needs at least one item")
        owner_of.extend([i] * int(k))
    n = len(group_sizes)
    return gt_from_video_texts(owner_of, n) if has_multi_vision_gt else gt_from_text_videos(owner_of, n)
