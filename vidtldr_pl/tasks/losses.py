"""UMT fine-tuning losses for retrieval (official ``models/criterions.py`` of UMT / VINDLU): VTC and VTM.

Pure torch. VTC: symmetric InfoNCE over L2-normalised embeddings with a learnable temperature, samples of the same
video are all positives. VTM: ITM over (text, video) pairs: the positives, one hard-negative video per text and one
hard-negative text per video, each drawn from the softmax of the batch's similarities (same-video pairs excluded).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def same_video_mask(idx_a: Tensor, idx_b: Tensor) -> Tensor:
    """idx_a (A,), idx_b (B,) video indices -> (A, B) bool, True where both samples show the same video."""
    return idx_a.view(-1, 1) == idx_b.view(1, -1)


def vtc_loss(vision_feat: Tensor, text_feat: Tensor, idx: Tensor, temp: Tensor,
             all_vision: Tensor | None = None, all_text: Tensor | None = None, all_idx: Tensor | None = None) -> Tensor:
    """Video-text contrastive loss.

    Args:
        vision_feat: (B, E) and text_feat: (B, E) L2-normalised embeddings of this process's samples.
        idx: (B,) video index of each sample (captions of the same video are positives of each other).
        temp: scalar temperature.
        all_vision / all_text / all_idx: the same gathered over every process (with gradients), as official
            ``all_gather=True``; None on one process.

    Returns: (vtc_v2t + vtc_t2v) / 2, a scalar.
    """
    all_vision = vision_feat if all_vision is None else all_vision
    all_text = text_feat if all_text is None else all_text
    all_idx = idx if all_idx is None else all_idx
    sim_v2t = vision_feat @ all_text.t() / temp  # (B, B_all)
    sim_t2v = text_feat @ all_vision.t() / temp
    targets = same_video_mask(idx, all_idx).float()
    targets = targets / targets.sum(dim=1, keepdim=True)
    loss_v2t = -(F.log_softmax(sim_v2t, dim=1) * targets).sum(dim=1).mean()
    loss_t2v = -(F.log_softmax(sim_t2v, dim=1) * targets).sum(dim=1).mean()
    return (loss_v2t + loss_t2v) / 2


@torch.no_grad()
def sample_hard_negatives(vision_feat: Tensor, text_feat: Tensor, idx: Tensor, temp: Tensor,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One hard negative per sample (official VTM): for each text a video, for each video a text.

    Weights are softmax(sim / temp) + 1e-4 with pairs of the same video set to 0; a batch in which every sample
    shows the same video has no negative and raises.

    Returns: (video_for_text (B,), text_for_video (B,)) indices into the batch.
    """
    sim_v2t = vision_feat.float() @ text_feat.float().t() / temp.float()
    same = same_video_mask(idx, idx)
    if bool(same.all(dim=1).any()):
        raise ValueError("VTM needs at least two different videos in every batch (a sample has no negative)")
    w_v2t = (F.softmax(sim_v2t, dim=1) + 1e-4).masked_fill(same, 0)
    w_t2v = (F.softmax(sim_v2t.t(), dim=1) + 1e-4).masked_fill(same, 0)
    video_for_text = torch.multinomial(w_t2v, 1, generator=generator).squeeze(1)
    text_for_video = torch.multinomial(w_v2t, 1, generator=generator).squeeze(1)
    return video_for_text, text_for_video


def vtm_loss(itm_logits: Tensor, batch_size: int) -> Tensor:
    """itm_logits (3B, 2) of [positives; (text, hard video); (hard text, video)] -> cross-entropy, label 1 then 0."""
    labels = torch.zeros(3 * batch_size, dtype=torch.long, device=itm_logits.device)
    labels[:batch_size] = 1
    return F.cross_entropy(itm_logits.float(), labels)
