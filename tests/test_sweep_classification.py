"""Decode-once evaluation for classification: the cached DataModule gives the same top-1 / top-5 as the plain one,
pulls the wrapped loader once for several merge settings, and counts every decoded view."""
from __future__ import annotations

from classification_data import (
    make_datamodule, make_task, make_trainer, one_thread, save_tiny_model, write_list, write_videos,
)

from vidtldr_pl.compare import evaluate_runs
from vidtldr_pl.explore import CachedEvalDataModule
from vidtldr_pl.merging import MergeSetting


def test_cached_classification_equals_plain_and_decodes_once(tmp_path):
    labels = [0, 1, 2, 1]
    names = write_videos(tmp_path / "videos", labels)
    test_list = write_list(tmp_path / "test.txt", names, labels)
    ckpt = save_tiny_model(tmp_path / "tiny.safetensors")  # the same weights for every task below
    settings = [MergeSetting(method="none"), MergeSetting(method="tome", r=[4, 4])]
    with one_thread():
        plain = evaluate_runs(make_trainer(), make_task(ckpt), make_datamodule(tmp_path / "videos", test_list), settings)
        inner = make_datamodule(tmp_path / "videos", test_list, test_clips=2, test_crops=1)
        pulls = []
        original = inner.test_dataloader
        inner.test_dataloader = lambda: pulls.append(1) or original()
        cached_dm = CachedEvalDataModule(inner)
        cached = evaluate_runs(make_trainer(), make_task(ckpt), cached_dm, settings)
        reference = evaluate_runs(make_trainer(), make_task(ckpt),
                                  make_datamodule(tmp_path / "videos", test_list, test_clips=2, test_crops=1), settings)
    assert len(pulls) == 1 and cached_dm.loads["test"] == 2  # one decode pass for two evaluations
    assert cached_dm.decoded["test"] == len(labels) * 2  # 4 videos x 2 views, each decoded once
    for got, want in zip(cached, reference):
        assert got["top1"] == want["top1"] and got["top5"] == want["top5"]
    assert [r["method"] for r in plain] == ["none", "tome"]
