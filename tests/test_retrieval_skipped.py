"""With skip_errors, a video that could not be decoded counts as a miss in both directions (never as a hit by a tie)."""
from __future__ import annotations

import torch

from vidtldr_pl.metrics.retrieval import retrieval_metrics
from vidtldr_pl.tasks.retrieval import _fill_missing, _sink_missing


def test_fill_missing_puts_zero_features_in_video_order():
    index = torch.tensor([0, 2])
    itc = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tokens = torch.ones(2, 3, 4)
    idx, full_itc, full_tokens = _fill_missing(index, itc, tokens, 3)
    assert idx.tolist() == [0, 1, 2] and full_itc[1].abs().sum() == 0 and torch.equal(full_itc[2], itc[1])
    assert full_tokens.shape == (3, 3, 4) and full_tokens[1].abs().sum() == 0 and full_tokens[2].sum() == 12


def test_a_skipped_video_is_a_miss_whatever_the_ties():
    vid2txt, txt2vid = [0, 1, 2], [0, 1, 2]
    perfect = torch.eye(3)  # every video retrieves its caption and is retrieved by it
    for skipped in ([0], [1], [2], [0, 2]):
        s_v2t, s_t2v = _sink_missing(perfect, perfect.t(), skipped, vid2txt)
        m = retrieval_metrics(s_v2t, s_t2v, vid2txt, txt2vid)
        expected = 100.0 * (3 - len(skipped)) / 3
        assert abs(m["txt_r1"] - expected) < 1e-6 and abs(m["img_r1"] - expected) < 1e-6, (skipped, m)
    assert _sink_missing(perfect, perfect.t(), [], vid2txt)[0] is perfect
