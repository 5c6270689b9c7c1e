"""Pure-PyTorch token merging: ToMe and vid-TLDR, schedules, and a one-call ``patch`` for backbones."""
from .matching import MergePlan, bipartite_soft_matching, merge_tokens, merge_wavg
from .methods import METHODS, MergeMethod, RandomMerge, ToMe, VidTLDR, build_method
from .patch import LayerMerge, MergeableEncoder, MergeSettings, find_mergeable, patch, unpatch
from .saliency import (
    SALIENCY_BACKENDS,
    negative_entropy_from_probs,
    negative_entropy_from_qk,
    sharpen,
    vidtldr_saliency,
)
from .schedule import ScheduleError, build_schedule, effective_r, token_counts
from .setting import MergeSetting, apply_merge, as_setting, set_attention
from .state import AttentionInfo, MergeState

__all__ = [
    "METHODS", "SALIENCY_BACKENDS", "AttentionInfo", "LayerMerge", "MergeMethod", "MergePlan", "MergeSettings",
    "MergeSetting", "MergeState", "MergeableEncoder", "apply_merge", "as_setting", "set_attention", "RandomMerge", "ScheduleError", "ToMe", "VidTLDR", "bipartite_soft_matching",
    "build_method", "build_schedule", "effective_r", "find_mergeable", "merge_tokens", "merge_wavg",
    "negative_entropy_from_probs", "negative_entropy_from_qk", "patch", "sharpen", "token_counts", "unpatch",
    "vidtldr_saliency",
]
