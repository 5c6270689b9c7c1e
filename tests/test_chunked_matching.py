"""Memory-safe matching (issue 26, item 4): the similarity matrix is reduced to row maxima in chunks of rows once it
would exceed ``MAX_SCORES`` entries; the plan is identical to the one-piece matching (same indices, same ties)."""
from __future__ import annotations

import pytest
import torch

from vidtldr_pl.merging import MergeSetting, apply_merge, matching
from vidtldr_pl.merging.matching import best_matches, bipartite_soft_matching

FIELDS = ("src_idx", "dst_idx", "unm_idx")


@pytest.mark.parametrize("shape,protected,affine", [((2, 2353, 64), 1, True), ((3, 197, 32), 1, False),
                                                     ((2, 300, 16), 3, False), ((1, 50, 8), 0, True)])
@pytest.mark.parametrize("max_scores", [1, 4096, 65536])
def test_chunked_matching_gives_the_same_plan(shape, protected, affine, max_scores):
    metric = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    r = shape[1] // 4
    whole = bipartite_soft_matching(metric, r, protected=protected, affine_scores=affine, max_scores=None)
    chunked = bipartite_soft_matching(metric, r, protected=protected, affine_scores=affine, max_scores=max_scores)
    for name in FIELDS:
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name


def test_ties_keep_the_first_index_in_every_chunk():
    a = torch.ones(1, 6, 4)
    b = torch.ones(1, 5, 4)  # every score ties
    score, index = best_matches(a, b, max_scores=5)  # one row per chunk
    assert index.eq(0).all() and torch.allclose(score, torch.ones_like(score))  # cosine 1 everywhere


def test_protected_rows_and_columns_score_minus_infinity_across_chunks():
    a, b = torch.randn(2, 9, 4), torch.randn(2, 9, 4)
    whole = best_matches(a, b, protected=5, max_scores=None)
    for max_scores in (2 * 9, 3 * 2 * 9):  # one and three rows per chunk
        chunked = best_matches(a, b, protected=5, max_scores=max_scores)
        assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert torch.isinf(whole[0][:, :3]).all() and not torch.isinf(whole[0][:, 3:]).any()
    assert not whole[1][:, 3:].lt(2).any()  # the first two columns are never a destination


@pytest.mark.parametrize("method", ["tome", "vidtldr"])
def test_a_merged_encoder_is_unchanged_by_chunking(method, monkeypatch):
    from vidtldr_pl.backbones import create_model

    torch.manual_seed(0)
    encoder = create_model("umt_tiny").vision_encoder.eval()
    apply_merge(encoder, MergeSetting(method=method, r=[16, 8, 4, 0]))
    video = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        whole = encoder(video)[0]
        monkeypatch.setattr(matching, "MAX_SCORES", 64)  # a few rows per chunk
        chunked = encoder(video)[0]
    assert torch.equal(whole, chunked)
