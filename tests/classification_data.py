"""Small labelled videos written with PyAV, the classification DataModule / task / trainer built on them, and the
brute-force multi-view reference. Shared by tests/test_classification*.py and tests/ddp_classification_script.py."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from vidtldr_pl.data_modules.classification import VideoClassificationDataModule
from vidtldr_pl.data_modules.synthetic import write_mp4
from vidtldr_pl.backbones import create_model
from vidtldr_pl.tasks import ClassificationTask

COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (235, 215, 40), (150, 60, 200), (245, 140, 30),
           (40, 210, 220), (120, 120, 120))
NUM_CLASSES = len(COLOURS)
IMG = 64  # videomae_tiny: 64 px, 4 frames (tubelet 2) -> 2 x 4 x 4 = 32 tokens


def render(label: int, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a background of the class colour (noisy) with a bright square crossing it."""
    rng = np.random.default_rng(seed)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    base = np.array(COLOURS[label], dtype=np.float32)
    for t in range(frames):
        frame = base + rng.normal(0, 12, (height, width, 3))
        x = int((t * 5 + seed * 7) % max(1, width - 12))
        frame[height // 3: height // 3 + 12, x:x + 12] = 255
        video[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


@contextmanager
def one_thread():
    """torch on one thread (a tiny model on a shared, busy CPU is many times faster so), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_videos(root: Path, labels: list[int], seed: int = 0) -> list[str]:
    """One mp4 per label under ``root`` (varied lengths 18-45 frames, landscape and portrait); returns the names."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i, label in enumerate(labels):
        frames = 18 + (i * 11 + seed * 5) % 28
        height, width = (72, 96) if i % 3 else (96, 72)
        name = f"clip_{i:02d}.mp4"
        write_mp4(root / name, render(label, frames, height, width, seed * 100 + i), fps=8)
        names.append(name)
    return names


def write_list(path: Path, names: list[str], labels: list[int]) -> Path:
    """A Kinetics-style ``<path> <label>`` list."""
    path.write_text("".join(f"{n} {y}\n" for n, y in zip(names, labels)))
    return path


def make_datamodule(root: Path, test_list: Path, train_list: Path | None = None, **kw) -> VideoClassificationDataModule:
    """Dense protocol at the tiny model's size: 4 frames 2 apart, 5 clips x 3 crops (K400's view layout)."""
    args = {"protocol": "dense", "num_frames": 4, "sampling_rate": 2, "test_clips": 5, "test_crops": 3, "img_size": IMG,
            "batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "decode_threads": 1, "num_classes": NUM_CLASSES,
            **kw}
    return VideoClassificationDataModule(test=str(test_list), train=str(train_list) if train_list else None,
                                         video_root=str(root), **args)


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A videomae_tiny with NUM_CLASSES outputs and seeded random weights, as a safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = create_model("videomae_tiny", num_classes=NUM_CLASSES)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_task(checkpoint: Path | None = None, **kw) -> ClassificationTask:
    overrides = {"num_classes": NUM_CLASSES, **kw.pop("model_overrides", {})}
    return ClassificationTask(model="videomae_tiny", checkpoint=str(checkpoint) if checkpoint else None,
                              model_overrides=overrides, **kw)


def make_trainer(callbacks: list | None = None, **kw) -> pl.Trainer:
    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, **kw}
    return pl.Trainer(callbacks=callbacks or [], **kw)


@torch.no_grad()
def bruteforce_scores(model: torch.nn.Module, dm: VideoClassificationDataModule, stage: str = "test") -> torch.Tensor:
    """Per-video mean over views of softmax(logits), one view at a time: (num_videos, C) float64."""
    dataset = dm.dataset(stage)
    model.eval()
    scores = []
    for video in range(dm.num_videos(stage)):
        probs = []
        for view in range(dm.num_views(stage)):
            x = dataset.view(video, view)  # (T, 3, H, W)
            logits = model(x.permute(1, 0, 2, 3)[None])  # (1, 3, T, H, W)
            probs.append(torch.softmax(logits.double(), -1)[0])
        scores.append(torch.stack(probs).mean(0))
    return torch.stack(scores)
