"""Loyalty: how closely a merged model agrees with the unmerged model of the same run, per video (pure functions).

Accuracy says how often a model is right; loyalty says how often the merged model does what the unmerged one did
(ToMe-style reductions are meant to be a drop-in approximation, so this is the direct measure). Every function takes
the reference (unmerged) output first and is exactly 1 (overlap / agreement / correlation / cosine) or 0 (KL) when the
two are the same tensors: the statistics are computed in float64 with the same operations on both sides.

Keys (``loyalty/...`` in a results row; fractions in [0, 1] except KL, in nats, >= 0):

- classification: ``top1_agreement`` (same arg-max class), ``kl`` (mean KL(unmerged || merged) of the per-video class
  distributions), ``feature_cosine`` (mean cosine of the pooled features, per encoder input i.e. view);
- retrieval: ``t2v_top{k}_overlap`` / ``v2t_top{k}_overlap`` (|top-k ∩ top-k'| / k per query, mean; on the
  matrices the metrics rank by: ITM re-ranked where there is ITM, k <= its re-ranked k), ``t2v_spearman`` /
  ``v2t_spearman`` (Spearman rank correlation of each query's ITC similarity row, mean), ``feature_cosine`` (mean
  cosine of the video embeddings).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scipy.stats import rankdata
from torch import Tensor

PREFIX = "loyalty/"
LOWER_IS_BETTER = frozenset({f"{PREFIX}kl"})
TOPK = (1, 5, 10)
# the one column of the printed table, per task (the first key present)
TABLE_KEYS = ((f"{PREFIX}top1_agreement", "top-1 agree"), (f"{PREFIX}t2v_top5_overlap", "t2v top-5 overlap"),
              (f"{PREFIX}feature_cosine", "feature cos"))
LABELS = {f"{PREFIX}top1_agreement": "top-1 agreement with unmerged", f"{PREFIX}kl": "KL(unmerged || merged)",
          f"{PREFIX}feature_cosine": "cosine of pooled features to unmerged",
          f"{PREFIX}t2v_spearman": "t2v Spearman with unmerged", f"{PREFIX}v2t_spearman": "v2t Spearman with unmerged",
          **{f"{PREFIX}{d}_top{k}_overlap": f"{d} top-{k} overlap with unmerged" for d in ("t2v", "v2t") for k in TOPK}}


def higher_is_better(key: str) -> bool:
    """Whether a larger value of the results key ``key`` is better (every metric but ``loyalty/kl``)."""
    return key not in LOWER_IS_BETTER


def top1_agreement(ref: Tensor, new: Tensor) -> float:
    """Fraction of rows whose arg-max agrees. ref, new: (N, C) scores (logits or probabilities)."""
    _same_shape(ref, new)
    return float((ref.argmax(-1) == new.argmax(-1)).double().mean())


def mean_kl(ref: Tensor, new: Tensor, eps: float = 1e-12) -> float:
    """Mean over rows of KL(ref || new) in nats. ref, new: (N, C) probability rows (each sums to 1); ``new`` is
    clamped to ``eps`` so that a class the merged model gives probability 0 costs a finite amount; terms with
    ``ref == 0`` are 0."""
    _same_shape(ref, new)
    p, q = ref.double(), new.double().clamp_min(eps)
    terms = torch.where(p > 0, p * (p.clamp_min(eps).log() - q.log()), torch.zeros_like(p))
    return float(terms.sum(-1).clamp_min(0).mean())


def _row_correlation(a: Tensor, b: Tensor) -> Tensor:
    """(Q,) cosine of each row pair of a, b: (Q, M), float64; exactly 1 where a row equals its partner."""
    a, b = a.double(), b.double()
    num = (a * b).sum(-1)
    den = ((a * a).sum(-1) * (b * b).sum(-1)).sqrt()
    return (num / den).clamp(-1.0, 1.0)


def mean_cosine(ref: Tensor, new: Tensor) -> float:
    """Mean over rows of cos(ref_i, new_i). ref, new: (N, D) features (not necessarily unit length); a zero row (a
    skipped video) is left out."""
    _same_shape(ref, new)
    ref, new = ref.flatten(0, -2), new.flatten(0, -2)
    keep = (ref.abs().sum(-1) > 0) & (new.abs().sum(-1) > 0)
    if not bool(keep.any()):
        return float("nan")
    return float(_row_correlation(ref[keep], new[keep]).mean())


def topk_overlap(ref: Tensor, new: Tensor, k: int) -> float:
    """Mean over query rows of |top-k(ref_i) ∩ top-k(new_i)| / k. ref, new: (Q, M) scores of Q queries over M
    candidates; k is clipped to M."""
    _same_shape(ref, new)
    k = min(k, ref.shape[-1])
    if k < 1 or ref.shape[0] == 0:
        return float("nan")
    a, b = ref.topk(k, dim=-1).indices, new.topk(k, dim=-1).indices
    hits = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1)
    return float(hits.double().mean() / k)


def mean_spearman(ref: Tensor, new: Tensor) -> float:
    """Mean over query rows of Spearman's rank correlation (average ranks for ties). ref, new: (Q, M); rows that are
    constant on either side (no ranking, e.g. a skipped video) are left out."""
    _same_shape(ref, new)
    if ref.shape[0] == 0:
        return float("nan")
    ra = torch.from_numpy(rankdata(ref.double().cpu().numpy(), method="average", axis=-1))
    rb = torch.from_numpy(rankdata(new.double().cpu().numpy(), method="average", axis=-1))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    keep = (ra.abs().sum(-1) > 0) & (rb.abs().sum(-1) > 0)
    if not bool(keep.any()):
        return float("nan")
    return float(_row_correlation(ra[keep], rb[keep]).mean())


def classification_loyalty(ref: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> dict[str, float]:
    """Loyalty of a classification run. Each: ``probs`` (N, C) per-video class distributions, ``video_ids`` (N,)
    and optionally ``features`` (N, V, D) per-view pooled features; only videos both runs scored are compared."""
    ids_a, ids_b = ref["video_ids"].tolist(), new["video_ids"].tolist()
    common = sorted(set(ids_a) & set(ids_b))
    if not common:
        raise ValueError("loyalty: the run and its unmerged reference share no video")
    pa = torch.tensor([ids_a.index(i) for i in common]) if ids_a != common else slice(None)
    pb = torch.tensor([ids_b.index(i) for i in common]) if ids_b != common else slice(None)
    p, q = ref["probs"][pa], new["probs"][pb]
    out = {f"{PREFIX}top1_agreement": top1_agreement(p, q), f"{PREFIX}kl": mean_kl(p, q)}
    if "features" in ref and "features" in new:
        out[f"{PREFIX}feature_cosine"] = mean_cosine(ref["features"][pa], new["features"][pb])
    return out


def retrieval_loyalty(ref: Mapping[str, Tensor], new: Mapping[str, Tensor],
                      ks: Sequence[int] = TOPK) -> dict[str, float]:
    """Loyalty of a retrieval run. Each: ``t2v`` (Nt, Nv) and ``v2t`` (Nv, Nt) ranking matrices (ITM re-ranked or
    ITC), ``sim_v2t`` (Nv, Nt) ITC similarities, ``rerank_k`` (a 0-d tensor: the candidates ITM re-ranked per query,
    absent for ITC ranking; only ks <= it are reported, beyond it the matrices tie at their fill value) and optionally
    ``features`` (Nv, E) video embeddings."""
    out: dict[str, float] = {}
    limit = int(ref["rerank_k"]) if "rerank_k" in ref else None
    for k in ks:
        if limit is not None and k > limit:
            continue
        out[f"{PREFIX}t2v_top{k}_overlap"] = topk_overlap(ref["t2v"], new["t2v"], k)
        out[f"{PREFIX}v2t_top{k}_overlap"] = topk_overlap(ref["v2t"], new["v2t"], k)
    out[f"{PREFIX}t2v_spearman"] = mean_spearman(ref["sim_v2t"].t(), new["sim_v2t"].t())
    out[f"{PREFIX}v2t_spearman"] = mean_spearman(ref["sim_v2t"], new["sim_v2t"])
    if "features" in ref and "features" in new:
        out[f"{PREFIX}feature_cosine"] = mean_cosine(ref["features"], new["features"])
    return out


def loyalty(ref: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> dict[str, float]:
    """The loyalty keys of ``new`` against the reference ``ref``, both from a task's ``loyalty_outputs()``:
    classification (``probs``) or retrieval (``t2v``) outputs; only ``features``: the feature cosine alone."""
    if "probs" in ref:
        return classification_loyalty(ref, new)
    if "t2v" in ref:
        return retrieval_loyalty(ref, new)
    if "features" in ref:
        return {f"{PREFIX}feature_cosine": mean_cosine(ref["features"], new["features"])}
    raise ValueError(f"loyalty: unknown outputs {sorted(ref)} (expected probs, t2v or features)")


def outputs_nbytes(outputs: Mapping[str, Tensor]) -> int:
    """Bytes the tensors of a task's loyalty outputs take."""
    return sum(t.numel() * t.element_size() for t in outputs.values() if isinstance(t, Tensor))


def _same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"loyalty: the run's outputs {tuple(b.shape)} do not match the reference's {tuple(a.shape)}")


__all__ = ["LABELS", "LOWER_IS_BETTER", "PREFIX", "TABLE_KEYS", "TOPK", "classification_loyalty", "higher_is_better",
           "loyalty", "mean_cosine", "mean_kl", "mean_spearman", "outputs_nbytes", "retrieval_loyalty",
           "top1_agreement", "topk_overlap"]
