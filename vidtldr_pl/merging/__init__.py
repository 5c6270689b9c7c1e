"""Pure-PyTorch token reduction: ToMe, vid-TLDR (entropy or Representation-Shift saliency), random / saliency /
Representation-Shift dropping, schedules, and a one-call ``patch`` for backbones."""
from .matching import DropPlan, MergePlan, bipartite_soft_matching, drop_lowest, keep_tokens, merge_tokens, merge_wavg
from .methods import (
    METHODS, POSITIONS, MergeMethod, RandomDrop, RandomMerge, RepShiftDrop, SaliencyDrop, ToMe, VidTLDR,
    VidTLDRRepShift, build_method, register_method,
)
from .patch import LayerMerge, MergeableEncoder, MergeSettings, find_mergeable, patch, unpatch
from .saliency import (
    SALIENCY_BACKENDS,
    negative_entropy_from_probs,
    negative_entropy_from_qk,
    raw_saliency,
    sharpen,
    vidtldr_saliency,
)
from .shift import representation_shift
from .schedule import ScheduleError, build_schedule, effective_r, token_counts
from .setting import MergeOverride, MergeSetting, apply_merge, set_attention
from .state import AttentionInfo, MergeState, TokenGrid
from . import pruning  # noqa: F401  (registers topk, evit, sta)
from . import input_reduction  # noqa: F401  (registers rlt, frame_stride, resize: before the first block)
from . import temporal  # noqa: F401  (registers stim_temporal)
from . import video_tome  # noqa: F401  (registers tome_video)
from . import pitome  # noqa: F401  (registers pitome)
from . import threshold  # noqa: F401  (registers threshold: DyMU's threshold mode over a matching method)

__all__ = [
    "METHODS", "POSITIONS", "SALIENCY_BACKENDS", "AttentionInfo", "DropPlan", "LayerMerge", "MergeMethod", "MergePlan",
    "MergeOverride", "MergeSettings", "TokenGrid", "MergeSetting", "MergeState", "MergeableEncoder", "apply_merge",
    "set_attention",
    "RandomDrop", "RandomMerge", "RepShiftDrop", "SaliencyDrop", "ScheduleError", "ToMe", "VidTLDR",
    "VidTLDRRepShift", "bipartite_soft_matching", "build_method", "build_schedule", "drop_lowest", "effective_r",
    "find_mergeable", "keep_tokens", "register_method", "merge_tokens", "merge_wavg", "negative_entropy_from_probs",
    "negative_entropy_from_qk", "patch", "raw_saliency", "representation_shift", "sharpen", "token_counts",
    "unpatch", "vidtldr_saliency",
]
