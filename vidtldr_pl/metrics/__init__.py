"""Retrieval metrics (R@K, MdR, MnR) matching the official UMT ``itm_eval``."""
from vidtldr_pl.metrics.retrieval import (
    EXTRA_KEYS,
    OFFICIAL_KEYS,
    READABLE_NAMES,
    RetrievalGroundTruth,
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

__all__ = [
    "EXTRA_KEYS",
    "OFFICIAL_KEYS",
    "READABLE_NAMES",
    "RetrievalGroundTruth",
    "gt_from_groups",
    "gt_from_text_videos",
    "gt_from_video_texts",
    "itm_eval",
    "official_argsort",
    "one_to_one_gt",
    "ranks_of_ground_truth",
    "readable_metrics",
    "retrieval_metrics",
]
