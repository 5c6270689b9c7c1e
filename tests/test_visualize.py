"""Saliency / merge maps: shapes, files (PNG grid, GIF with one picture per frame, share plot), the command and the
Lightning callback (umt_tiny, a real mp4 in tmp_path)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from test_sweep import tiny_retrieval_config, write_clip

from vidtldr_pl.backbones import create_model
from vidtldr_pl.callbacks.merge_maps import MergeMapsCallback
from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable


def _tool():
    """tools/visualize.py (a command outside the package: it decodes with data_modules)."""
    spec = importlib.util.spec_from_file_location("visualize", Path(__file__).resolve().parents[1] / "tools" /
                                                  "visualize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


visualize = _tool()
R = [8, 4]  # umt_tiny: 4 frames x 4 x 4 patches = 64 tokens, 4 blocks


@pytest.mark.parametrize("method", ["vidtldr", "vidtldr_repshift"])
def test_maps_have_the_grid_shapes(method):
    torch.manual_seed(0)
    model = create_model("umt_tiny").eval()
    maps = visualize.video_maps(model, torch.randn(1, 3, 4, 64, 64), MergeSetting(method=method, r=R))
    assert maps.saliency.shape == (2, 4, 4, 4) and maps.layers == [0, 1]
    assert maps.saliency.min() >= 0 and maps.saliency.max() <= 1
    assert torch.equal(maps.background, maps.saliency[0] == 0) and 0 < maps.background.sum() < 64
    assert maps.share.shape == (2, 4) and torch.allclose(maps.share.sum(-1), torch.ones(2))
    assert maps.tokens_per_layer == [56, 52, 52, 52]
    # every patch ends in one of the 52 final tokens, or in none (-1: merged with weight 0 / dropped); the sizes
    # count the patches per token
    groups, sizes = maps.groups.flatten(), maps.group_size.flatten()
    assert maps.groups.shape == (4, 4, 4) and int(groups.max()) < 52 and int(groups.min()) >= -1
    held = groups >= 0
    counts = torch.bincount(groups[held], minlength=52)
    assert torch.equal(sizes[held], counts[groups[held]]) and bool((sizes[~held] == 0).all())
    assert int(held.sum()) >= 52  # the 52 final tokens hold at least one patch each
    assert not find_mergeable(model)[0].merge_settings.trace_source  # the model's own setting untouched


@pytest.mark.parametrize("method", ["tome", "saliency_drop"])
def test_a_method_without_saliency_is_refused(method):
    model = create_model("umt_tiny").eval()
    with pytest.raises(ValueError, match="no token saliency"):
        visualize.video_maps(model, torch.randn(1, 3, 4, 64, 64), MergeSetting(method=method, r=R))


def test_visualize_writes_the_files(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, seed=1)
    model = create_model("umt_tiny")
    info = visualize.visualize_file(model, clip, tmp_path / "out", MergeSetting(method="vidtldr", r=R))
    paths = info["paths"]
    grid = Image.open(paths["grid"])
    assert min(grid.size) > 300  # 4 rows x 4 frames
    gif = Image.open(paths["gif"])
    assert gif.n_frames == 4 and gif.size == (2 * 4 * 64, 2 * 64)  # frame | saliency | background | groups, x2
    assert Image.open(paths["share_png"]).size[0] > 300
    assert (tmp_path / "out" / "clip_share.svg").read_text().lstrip().startswith("<?xml")
    saved = json.loads((tmp_path / "out" / "clip.json").read_text())
    assert saved["tokens_per_layer"] == [56, 52, 52, 52] and len(saved["share"]) == 2 and len(saved["share"][0]) == 4


def test_visualize_command_needs_an_existing_video(tmp_path, capsys):
    assert visualize.main(["--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path)]) == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_callback_writes_the_first_n_videos_into_the_log_folder(tmp_path):
    from vidtldr_pl.cli import build_cli

    cfg = tiny_retrieval_config(tmp_path)
    cli = build_cli(["--config", str(cfg), "--trainer.enable_progress_bar=false"], "evaluate")
    apply_merge(cli.model, MergeSetting(method="vidtldr", r=R))
    callback = MergeMapsCallback(first_n=3)
    trainer = pl.Trainer(accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path / "logs"), callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    folder = tmp_path / "logs" / "lightning_logs" / "version_0" / "merge_maps"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"test_video{i}{suffix}" for i in range(3)
                           for suffix in ("_grid.png", ".gif", "_share.png", "_share.svg"))
    assert Image.open(folder / "test_video0.gif").n_frames == 4
