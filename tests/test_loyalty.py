"""Loyalty to the unmerged model: the metric functions on hand-worked inputs, the table column, and real demo sweeps
(action: VideoMAE; retrieval: UMT) in a subprocess on a few clips with the loyalty keys, column and plot."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

from vidtldr_pl.compare import REFERENCE_NAME, LoyaltyReference, results_table
from vidtldr_pl.merging import MergeSetting
from vidtldr_pl.metrics.loyalty import (
    classification_loyalty, higher_is_better, loyalty, mean_cosine, mean_kl, mean_spearman, retrieval_loyalty,
    top1_agreement, topk_overlap,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- hand-worked
def test_top1_agreement_counts_equal_argmax():
    ref = torch.tensor([[.7, .2, .1], [.1, .8, .1], [.3, .3, .4]])
    new = torch.tensor([[.6, .3, .1], [.5, .4, .1], [.2, .2, .6]])  # argmax 0, 0, 2 against 0, 1, 2
    assert top1_agreement(ref, new) == pytest.approx(2 / 3, abs=1e-12)


def test_mean_kl_by_hand():
    ref = torch.tensor([[.5, .5], [1.0, 0.0]], dtype=torch.float64)
    new = torch.tensor([[.25, .75], [.5, .5]], dtype=torch.float64)
    # row 1: .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3); row 2: 1 ln(1/.5) + 0 = ln 2
    assert mean_kl(ref, new) == pytest.approx((0.5 * math.log(4 / 3) + math.log(2)) / 2, abs=1e-12)
    assert mean_kl(ref, ref) == 0.0
    # a class the merged model gives 0 where the reference does not: finite (clamped at 1e-12)
    assert mean_kl(new, ref) == pytest.approx((0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
                                               + 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12)) / 2, rel=1e-9)


def test_mean_cosine_by_hand_and_zero_rows_left_out():
    ref = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    new = torch.tensor([[0.0, 2.0], [3.0, 3.0], [1.0, 0.0]])  # cos 0, cos 1, a skipped (zero) video
    assert mean_cosine(ref, new) == pytest.approx(0.5, abs=1e-12)


def test_topk_overlap_by_hand():
    ref = torch.tensor([[5., 4, 3, 2, 1], [1., 2, 3, 4, 5]])
    new = torch.tensor([[5., 1, 4, 3, 2], [1., 2, 3, 4, 5]])
    assert topk_overlap(ref, new, 1) == 1.0
    assert topk_overlap(ref, new, 2) == pytest.approx(0.75)  # {0, 1} vs {0, 2}: 1/2; second row 1
    assert topk_overlap(ref, new, 3) == pytest.approx((2 / 3 + 1) / 2)  # {0, 1, 2} vs {0, 2, 3}
    assert topk_overlap(ref, new, 99) == 1.0  # k clipped to the 5 candidates


def test_mean_spearman_by_hand_with_ties():
    ref = torch.tensor([[1., 2, 3, 4], [1., 2, 3, 4]])
    new = torch.tensor([[1., 2, 4, 3], [4., 3, 2, 1]])
    # 1 - 6 * 2 / (4 * 15) = 0.8 and -1
    assert mean_spearman(ref, new) == pytest.approx((0.8 - 1.0) / 2, abs=1e-12)
    # ties take average ranks: (1.5, 1.5, 3) vs (1, 2, 3) -> 1.5 / sqrt(1.5 * 2)
    assert mean_spearman(torch.tensor([[1., 1, 2]]), torch.tensor([[1., 2, 3]])) == pytest.approx(
        1.5 / math.sqrt(3.0), abs=1e-12)
    # a constant row (a skipped video) has no ranking: left out
    assert mean_spearman(torch.tensor([[1., 2, 3], [0., 0, 0]]), torch.tensor([[1., 2, 3], [5., 1, 2]])) == 1.0


def test_identical_outputs_are_exactly_loyal():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(37, 12, generator=g).double().softmax(-1)
    out = {"probs": probs, "video_ids": torch.arange(37), "features": torch.randn(37, 3, 24, generator=g)}
    assert loyalty(out, out) == {"loyalty/top1_agreement": 1.0, "loyalty/kl": 0.0, "loyalty/feature_cosine": 1.0}
    sim = torch.randn(20, 45, generator=g)
    ret = {"t2v": sim.t(), "v2t": sim, "sim_v2t": sim, "features": torch.randn(20, 16, generator=g)}
    values = retrieval_loyalty(ret, ret)
    assert set(values) == {f"loyalty/{d}_top{k}_overlap" for d in ("t2v", "v2t") for k in (1, 5, 10)} | {
        "loyalty/t2v_spearman", "loyalty/v2t_spearman", "loyalty/feature_cosine"}
    assert all(v == 1.0 for v in values.values())


def test_classification_loyalty_aligns_videos_and_retrieval_respects_the_reranked_k():
    ref = {"probs": torch.tensor([[.9, .1], [.2, .8], [.6, .4]]).double(), "video_ids": torch.tensor([0, 1, 2])}
    new = {"probs": torch.tensor([[.3, .7], [.9, .1]]).double(), "video_ids": torch.tensor([1, 2])}  # video 0 skipped
    assert classification_loyalty(ref, new)["loyalty/top1_agreement"] == 1.0
    sim = torch.randn(6, 8)
    ret = {"t2v": sim.t(), "v2t": sim, "sim_v2t": sim, "rerank_k": torch.tensor(5)}
    assert sorted(k for k in retrieval_loyalty(ret, ret) if "overlap" in k) == [
        "loyalty/t2v_top1_overlap", "loyalty/t2v_top5_overlap", "loyalty/v2t_top1_overlap", "loyalty/v2t_top5_overlap"]
    with pytest.raises(ValueError, match="do not match"):
        top1_agreement(torch.zeros(2, 3), torch.zeros(3, 3))
    assert not higher_is_better("loyalty/kl") and higher_is_better("loyalty/top1_agreement")


class _Task:
    """A stand-in task: loyalty_outputs() returns whatever the last 'evaluation' set."""

    outputs = None

    def loyalty_outputs(self):
        return self.outputs


def test_reference_plan_and_score():
    task = _Task()
    tome = MergeSetting(method="tome", r=[2])
    none = MergeSetting(method="none", name="plain")
    assert LoyaltyReference.plan([tome, none], task) == [none, tome]
    planned = LoyaltyReference.plan([tome], task)
    assert planned[0].method == "none" and planned[0].label == REFERENCE_NAME and planned[1] is tome
    assert LoyaltyReference.plan([tome], object()) == [tome]  # a task without loyalty outputs: unchanged
    ref = LoyaltyReference()
    task.outputs = {"probs": torch.tensor([[.9, .1], [.2, .8]]).double(), "video_ids": torch.tensor([0, 1])}
    assert ref.score(tome, task) == {}  # no reference yet
    assert ref.score(none, task) == {"loyalty/top1_agreement": 1.0, "loyalty/kl": 0.0}
    task.outputs = {"probs": torch.tensor([[.4, .6], [.2, .8]]).double(), "video_ids": torch.tensor([0, 1])}
    assert ref.score(tome, task)["loyalty/top1_agreement"] == 0.5
    small = LoyaltyReference(max_mb=1e-9)
    assert small.score(none, task) == {} and small.off


def test_table_has_one_loyalty_column():
    rows = [{"name": "none", "method": "none", "top1": 50.0, "top5": 90.0, "gflops": 2.0, "tokens_per_layer": [4],
             "videos_per_s": 1.0, "loyalty/top1_agreement": 1.0, "loyalty/kl": 0.0},
            {"name": "tome", "method": "tome", "top1": 40.0, "top5": 80.0, "gflops": 1.0, "tokens_per_layer": [2],
             "videos_per_s": 2.0, "loyalty/top1_agreement": 0.875, "loyalty/kl": 0.1}]
    table = results_table(rows, "t")
    text = io.StringIO()
    Console(file=text, width=300).print(table)
    assert [c.header for c in table.columns][:4] == ["method", "top-1", "top-5", "top-1 agree"]
    assert "0.875" in text.getvalue() and "1.000" in text.getvalue()


# ---------------------------------------------------------------------------------------------- real demo sweeps
def _sweep(tmp: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "vidtldr_pl.sweep", "--config", f"configs/{config}", *args,
           f"--data.init_args.cache_dir={tmp / 'cache'}", "--data.init_args.num_workers=0",
           "--trainer.logger=false", f"--trainer.default_root_dir={tmp}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _check_rows(rows: list[dict], keys: list[str], lower: tuple[str, ...] = ()) -> None:
    ref, merged = rows[0], rows[1:]
    assert ref["method"] == "none"
    for key in keys:
        assert ref[key] == (0.0 if key in lower else 1.0), key
        for row in merged:
            if key in lower:
                assert row[key] >= 0.0, (row["name"], key)
            else:
                assert -1.0 <= row[key] <= 1.0, (row["name"], key)
    # merging changes the model: some merged row is less than perfectly loyal
    assert any(row[keys[0]] < 1.0 or row.get("loyalty/feature_cosine", 1.0) < 1.0 for row in merged)


def test_action_demo_sweep_reports_loyalty(tmp_path):
    out = tmp_path / "out"
    done = _sweep(tmp_path, "demo_videomae.yaml", "--methods", "tome,random_drop", "--schedules", "front:48",
                  "--out", str(out), "--metric", "loyalty/top1_agreement",
                  "--data.init_args.num_test=12", "--data.init_args.eval_batch_size=6")
    rows = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["none", "tome", "random_drop"]  # the reference added first
    assert rows[0]["name"] == REFERENCE_NAME
    _check_rows(rows, ["loyalty/top1_agreement", "loyalty/feature_cosine", "loyalty/kl"], lower=("loyalty/kl",))
    assert rows[2]["loyalty/kl"] > 0.0 and rows[2]["loyalty/feature_cosine"] < 1.0
    table = (out / "sweep.md").read_text().splitlines()
    assert "top-1 agreement with unmerged" in table[0] and len(table) == 2 + 3
    assert "top-1 agree" in done.stdout  # the printed table's loyalty column
    assert Image.open(out / "pareto.png").size[0] > 1500  # three panels: loyalty, accuracy, throughput


def test_retrieval_demo_sweep_reports_loyalty(tmp_path):
    out = tmp_path / "out"
    _sweep(tmp_path, "demo_umt.yaml", "--methods", "none,tome", "--schedules", "front:72", "--out", str(out),
           "--data.init_args.num_test=10", "--data.init_args.eval_batch_size=5")
    rows = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["none", "tome"]
    keys = ["loyalty/t2v_top5_overlap", "loyalty/t2v_top1_overlap", "loyalty/t2v_top10_overlap",
            "loyalty/v2t_top5_overlap", "loyalty/t2v_spearman", "loyalty/v2t_spearman", "loyalty/feature_cosine"]
    _check_rows(rows, keys)
    assert rows[1]["loyalty/t2v_spearman"] < 1.0 and rows[1]["loyalty/feature_cosine"] < 1.0
    assert "t2v top-5 overlap" in (out / "sweep.md").read_text().splitlines()[0]
    # replot with loyalty as the y-axis, to another path
    plot = tmp_path / "img" / "loyal"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "vidtldr_pl.sweep", "--replot", "--out", str(out), "--metric",
                           "loyalty/t2v_spearman", "--plot", str(plot)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(plot.with_suffix(".png")).size[0] > 1500 and plot.with_suffix(".svg").is_file()
    assert "t2v Spearman with unmerged" in (out / "sweep.md").read_text().splitlines()[0]
    bad = subprocess.run([sys.executable, "-m", "vidtldr_pl.sweep", "--replot", "--out", str(out), "--metric",
                          "loyalty/bogus"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "loyalty/bogus" in bad.stderr


def test_evaluate_compare_rows_report_loyalty(tmp_path):
    """evaluate.py's compare rows (the action demo's config, 12 clips): each row has the loyalty keys, the unmerged
    row exactly loyal, and the printed table its loyalty column."""
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "evaluate.py", "--config", "configs/demo_videomae.yaml", f"--results={out}",
                           f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.num_test=12",
                           "--data.init_args.num_workers=0", "--trainer.logger=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["runs"]
    assert [r["method"] for r in rows] == ["none", "tome", "vidtldr", "random"]
    _check_rows(rows, ["loyalty/top1_agreement", "loyalty/feature_cosine", "loyalty/kl"], lower=("loyalty/kl",))
    assert "top-1 agree" in done.stdout


def test_methods_all_names_every_method():
    """``--methods all`` (the demo plots' command): none first, then every method of the table, in its order."""
    from vidtldr_pl.catalog import METHOD_NAMES
    from vidtldr_pl.sweep import check_methods

    assert check_methods("all") == ["none", *METHOD_NAMES]
