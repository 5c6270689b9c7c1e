"""Three small zero-shot "splits" (different videos and label subsets of the 8 colour classes), the zero-shot task
on a seeded random vificlip_tiny, and the brute-force reference. Shared by tests/test_zero_shot.py and
tests/ddp_zero_shot_script.py."""
from __future__ import annotations

from pathlib import Path

import torch
from classification_data import make_trainer, write_list, write_videos

from vidtldr_pl.data_modules.classification import VideoClassificationDataModule
from vidtldr_pl.backbones import create_model
from vidtldr_pl.tasks.zero_shot import ZeroShotClassificationTask

CLASS_NAMES = ["red_paint", "green grass", "blue sky", "yellow sun", "purple rain", "orange fruit", "cyan water",
               "grey stone"]
SPLITS = {"split1": [0, 1, 2, 3, 5, 6, 7], "split2": [7, 6, 5, 4, 3], "split3": [1, 1, 4, 4, 0, 2]}
IMG, FRAMES = 32, 4


def write_splits(root: Path) -> Path:
    """videos/ + split{1,2,3}.txt under root; returns root."""
    for i, (name, labels) in enumerate(SPLITS.items()):
        names = write_videos(root / "videos" / name, labels, seed=i)
        write_list(root / f"{name}.txt", [f"{name}/{n}" for n in names], labels)
    return root


def save_model(path: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_model("vificlip_tiny", num_frames=FRAMES)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def datamodule(root: Path, split: str) -> VideoClassificationDataModule:
    """ViFi-CLIP's zero-shot view at the tiny size: one frame per segment, the segment middles (validate stage,
    val_views single), one centre crop."""
    return VideoClassificationDataModule(
        test=str(root / f"{split}.txt"), video_root=str(root / "videos"), class_names=CLASS_NAMES,
        protocol="segment", num_frames=FRAMES, val_views="single", test_clips=1, test_crops=1, img_size=IMG,
        eval_batch_size=3, num_workers=0, decode_threads=1)


def task(checkpoint: Path) -> ZeroShotClassificationTask:
    return ZeroShotClassificationTask(model="vificlip_tiny", checkpoint=str(checkpoint),
                                      model_overrides={"num_frames": FRAMES})


@torch.no_grad()
def bruteforce(checkpoint: Path, dm: VideoClassificationDataModule, stage: str = "validate"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video mean over views of softmax(scale x cos), one view and one prompt at a time: (scores, labels)."""
    from vidtldr_pl.text.clip_tokenizer import clip_tokenize

    model = create_model("vificlip_tiny", checkpoint=str(checkpoint), num_frames=FRAMES).eval()
    prompts = torch.stack([model.encode_text(clip_tokenize(f"a photo of a {n.replace('_', ' ')}.", 16))[0]
                           for n in CLASS_NAMES])
    dataset, scores = dm.dataset(stage), []
    for v in range(dm.num_videos(stage)):
        probs = []
        for view in range(dm.num_views(stage)):
            x = dataset.view(v, view).permute(1, 0, 2, 3)[None]  # (1, 3, T, H, W)
            logits = model.logit_scale.exp() * model.encode_video(x) @ prompts.t()
            probs.append(logits.double().softmax(-1)[0])
        scores.append(torch.stack(probs).mean(0))
    return torch.stack(scores), torch.tensor(dm.split(stage).labels)


__all__ = ["CLASS_NAMES", "SPLITS", "bruteforce", "datamodule", "make_trainer", "save_model", "task", "write_splits"]
