"""Pictures of MergeMaps over the frames: a PNG grid, an animated GIF and the per-frame saliency share plot
(matplotlib + Pillow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .figures import save_figure
from .maps import MergeMaps


def _upsample(grid: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w) -> (T, H, W) float numpy, nearest (each patch a square)."""
    x = grid.float()[:, None]
    return torch.nn.functional.interpolate(x, size=size, mode="nearest")[:, 0].numpy()


def group_colours(maps: MergeMaps, seed: int = 0) -> np.ndarray:
    """(T, h, w, 4) RGBA: patches merged into a token of 2+ patches get that token's colour; others (single
    patches, patches no token holds) transparent."""
    rng = np.random.default_rng(seed)
    groups = maps.groups.numpy()
    palette = rng.uniform(0.15, 1.0, size=(int(groups.max()) + 1, 3))
    rgba = np.zeros((*groups.shape, 4))
    rgba[..., :3] = palette[np.maximum(groups, 0)]
    rgba[..., 3] = np.where(maps.group_size.numpy() > 1, 0.75, 0.0)
    return rgba


def overlay_frames(frames: Tensor, maps: MergeMaps) -> dict[str, np.ndarray]:
    """frames: (T, H, W, 3) uint8 (one per patch-grid time step) -> {"frame", "saliency", "background",
    "groups"}: each (T, H, W, 3) uint8, the frame under a heat map / the dimmed background / the group colours."""
    import matplotlib

    t, h, w, _ = frames.shape
    if t != maps.groups.shape[0]:
        raise ValueError(f"{t} frames for a patch grid of {maps.groups.shape[0]} time steps")
    rgb = frames.numpy().astype(np.float64) / 255.0
    heat = matplotlib.colormaps["inferno"](_upsample(maps.saliency[0], (h, w)))[..., :3]
    bg = _upsample(maps.background, (h, w))[..., None]
    groups = group_colours(maps)
    groups_px = np.stack([np.stack([np.kron(groups[i, ..., c], np.ones((h // groups.shape[1], w // groups.shape[2])))
                                    for c in range(4)], -1) for i in range(t)])
    out = {
        "frame": rgb,
        "saliency": 0.35 * rgb + 0.65 * heat,
        "background": rgb * (1 - 0.75 * bg),
        "groups": rgb * (1 - groups_px[..., 3:]) + groups_px[..., :3] * groups_px[..., 3:],
    }
    return {k: (np.clip(v, 0, 1) * 255).astype(np.uint8) for k, v in out.items()}


ROWS = (("frame", "frame"), ("saliency", "saliency (1st merge)"), ("background", "background mask (dimmed)"),
        ("groups", "merged groups (final tokens)"))


def save_grid(images: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """A PNG grid: one row per kind (frame, saliency, background, groups), one column per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = images["frame"].shape[0]
    fig, axes = plt.subplots(len(ROWS), t, figsize=(1.6 * t, 1.7 * len(ROWS)), squeeze=False)
    for r, (key, label) in enumerate(ROWS):
        for c in range(t):
            ax = axes[r][c]
            ax.imshow(images[key][c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={c}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_gif(images: dict[str, np.ndarray], path: str | Path, scale: int = 2, ms_per_frame: int = 400) -> Path:
    """An animated GIF: each frame shows frame | saliency | background | groups side by side."""
    from PIL import Image

    t = images["frame"].shape[0]
    pictures = []
    for i in range(t):
        row = np.concatenate([images[key][i] for key, _ in ROWS], axis=1)
        pic = Image.fromarray(row)
        pictures.append(pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=ms_per_frame, loop=0)
    return path


def plot_share(maps: MergeMaps, out_stem: str | Path, title: str = "") -> list[Path]:
    """Each frame's share of the saliency at every merging block (the paper's Fig. 5), PNG + SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = maps.share.numpy() * 100
    fig, ax = plt.subplots(figsize=(6, 3.2))
    frames = np.arange(share.shape[1])
    width = 0.8 / share.shape[0]
    for k, layer in enumerate(maps.layers or range(share.shape[0])):
        ax.bar(frames + (k - (share.shape[0] - 1) / 2) * width, share[k], width, label=f"block {layer}")
    ax.axhline(100 / share.shape[1], color="gray", ls="--", lw=1, label="uniform")
    ax.set_xlabel("frame (patch-grid time step)")
    ax.set_ylabel("share of the saliency (%)")
    ax.set_xticks(frames)
    ax.legend(fontsize=7)
    ax.set_title(title or "per-frame saliency share")
    return save_figure(fig, out_stem)


def write_all(frames: Tensor, maps: MergeMaps, out_dir: str | Path, stem: str = "merge", title: str = "") -> dict[str, Path]:
    """Grid PNG, GIF and share plot (PNG + SVG) of one video into out_dir; returns the paths by kind."""
    out_dir = Path(out_dir)
    images = overlay_frames(frames, maps)
    share = plot_share(maps, out_dir / f"{stem}_share", f"per-frame saliency share: {stem}")
    return {"grid": save_grid(images, out_dir / f"{stem}_grid.png", title),
            "gif": save_gif(images, out_dir / f"{stem}.gif"), "share_png": share[0], "share_svg": share[1]}


__all__ = ["group_colours", "overlay_frames", "plot_share", "save_gif", "save_grid", "write_all"]
