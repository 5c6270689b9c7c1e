"""Threshold mode (DyMU): merge every pair above a calibrated per-block threshold; calibration hits its target."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidtldr_pl.merging import MergeSetting, apply_merge, bipartite_soft_matching, build_method
from vidtldr_pl.merging.matching import RowBudget, best_matches
from vidtldr_pl.merging.threshold import ThresholdMerge, load_thresholds, save_thresholds

from test_padding import encoder_of, run_blocks


def test_threshold_merges_every_pair_above():
    torch.manual_seed(0)
    metric = torch.randn(3, 30, 16)
    metric[1] = metric[1, :1] + 0.05 * metric[1]  # a near-static row: almost every pair is similar
    tau = 0.8
    plan = bipartite_soft_matching(metric, RowBudget(r=torch.full((3,), 15), count=torch.full((3,), 30),
                                                     threshold=tau))
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    score, _ = best_matches(a, b)
    assert torch.equal(plan.rows, (score > tau).sum(-1).clamp(max=15))
    assert plan.rows[1] > plan.rows[0]


@pytest.mark.parametrize("base", ["tome", "vidtldr"])
@pytest.mark.parametrize("attention", ["explicit", "fused"])
def test_threshold_rows_equal_alone(base, attention):
    """Each video of a batch gets the merges (and outputs) it gets alone with the same thresholds."""
    encoder = encoder_of("umt_tiny", base, [8, 8, 8], attention, True)
    wrapper = ThresholdMerge(base=base, thresholds=[0.6, 0.7, 0.75],
                             **({"metric": "hidden"} if base == "tome" else {}))
    for block in encoder.blocks:
        if block.merge is not None:
            block.merge.method = wrapper
    torch.manual_seed(4)
    with torch.no_grad():
        video = torch.randn(encoder.example_input(3).shape)
        video[1] = video[1, :, :1]  # a still video: the same frame repeated, many similar pairs
        tokens = encoder.embed(video)
        state = encoder.new_merge_state()
        out = run_blocks(encoder, tokens, state)
        counts = state.row_counts()
        assert counts[-1, 1] < counts[-1, 0]  # the still video keeps fewer tokens
        for b in range(3):
            alone_state = encoder.new_merge_state()
            alone = run_blocks(encoder, tokens[b:b + 1], alone_state)
            m = alone.shape[1]
            assert int(state.count[b]) == m
            torch.testing.assert_close(out[b, :m], alone[0], atol=1e-5, rtol=1e-5)


def test_threshold_refuses_drop_methods_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="bipartite matching"):
        ThresholdMerge(base="random_drop")
    with pytest.raises(ValueError, match="does not exist"):
        load_thresholds(tmp_path / "missing.json")
    path = save_thresholds(tmp_path / "t.json", [0.5, None], method="tome")
    with pytest.raises(ValueError, match="calibrated for method 'tome'"):
        ThresholdMerge(base="vidtldr", thresholds=str(path))
    assert ThresholdMerge(base="tome", thresholds=str(path)).thresholds == [0.5, None]
    with pytest.raises(ValueError, match="not a number"):
        load_thresholds(["x"])


def test_without_thresholds_is_the_fixed_r_method():
    """No thresholds: the schedule's r, exactly the inner method (what the backbone contract checks)."""
    torch.manual_seed(5)
    encoder = encoder_of("umt_tiny", "tome", [8, 4, 0], "fused", True)
    with torch.no_grad():
        tokens = encoder.embed(torch.randn(encoder.example_input(2).shape))
        ref = run_blocks(encoder, tokens, encoder.new_merge_state())
        for block in encoder.blocks:
            if block.merge is not None:
                inner = block.merge.method
                block.merge.method = ThresholdMerge(base="tome", protected=inner.protected)
        out = run_blocks(encoder, tokens, encoder.new_merge_state())
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_calibration_hits_target_on_the_demo_split(tmp_path):
    """Calibrate vid-TLDR's thresholds on 100 clips of the demo's validation split: the mean r per block is the
    target within 2 %; the saved file, read back, reproduces it."""
    from vidtldr_pl.calibrate import main, measure_r, _batches
    from vidtldr_pl.cli import build_cli
    from vidtldr_pl.merging import find_mergeable

    out = tmp_path / "thresholds.json"
    target = [72, 36, 18]
    assert main(["--config", "configs/demo_umt.yaml", "--method", "vidtldr", "--target-r", "72,36,18", "--out",
                 str(out), "--max-clips", "100"]) == 0
    record = json.loads(out.read_text())
    for want, got in zip(target, record["achieved_mean_r"]):
        assert abs(got - want) <= 0.02 * want, record
    assert record["thresholds"][3:] == [None] * 3 and record["clips"] == 100
    cli = build_cli(["--config", "configs/demo_umt.yaml"], "evaluate")
    task = cli.model.eval()
    apply_merge(task, MergeSetting(method="threshold", r=target,
                                   method_options={"base": "vidtldr", "thresholds": str(out)}))
    encoder = find_mergeable(task)[0]
    achieved, _, clips = measure_r(task, encoder, list(_batches(cli.datamodule, "val", 100)))
    assert clips == 100
    assert achieved == pytest.approx(record["achieved_mean_r"], abs=1e-3)
    assert Path(out).stat().st_size > 0 and build_method("threshold", base="vidtldr", thresholds=str(out))
