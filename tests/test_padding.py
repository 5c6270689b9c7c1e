"""Rows of different token counts (MergeState.count): a padded batch gives every video the output it gets alone."""
from __future__ import annotations

import pytest
import torch

from vidtldr_pl.backbones import create_model
from vidtldr_pl.merging import MergeSetting, MergeState, ToMe, apply_merge, find_mergeable
from vidtldr_pl.merging.matching import RowBudget, bipartite_soft_matching, drop_lowest
from vidtldr_pl.merging.methods import register_method

METHODS = ["tome", "vidtldr", "vidtldr_repshift", "saliency_drop", "repshift_drop", "tome_grouped"]


class GroupedToMe(ToMe):
    """ToMe planned one group of equal rows at a time (the path every method without ``row_budgets`` takes)."""

    name = "tome_grouped"
    row_budgets = False


def run_blocks(encoder: torch.nn.Module, x: torch.Tensor, state: MergeState) -> torch.Tensor:
    """The encoder's blocks and final norm on tokens x (B, N, C): ViTEncoder.forward after the embedding."""
    x = state.enter(x)
    for block in encoder.blocks:
        x = block(x, state)
    return encoder.norm(state.leave(x))


def encoder_of(model_name: str, method: str, r: object, attention: str, proportional: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    cls = GroupedToMe if method == "tome_grouped" else method
    if cls is GroupedToMe:
        from vidtldr_pl.merging.methods import METHODS as TABLE

        TABLE.setdefault(GroupedToMe.name, GroupedToMe)
    options = {"proportional_attention": proportional}
    if method in ("tome", "tome_grouped"):
        options["metric"] = "hidden" if attention == "explicit" else "keys"
    apply_merge(model, MergeSetting(method=method, r=r, attention=attention, method_options=options))
    if cls is GroupedToMe:
        TABLE.pop(GroupedToMe.name)
    encoder = find_mergeable(model)[0]
    with torch.no_grad():  # a trained model's attention is far from uniform; vid-TLDR's min-max needs that
        for block in encoder.blocks if not model_name.startswith("vificlip") else ():  # (CLIP's init is not)
            block.attn.qkv.weight[: 2 * encoder.cfg.embed_dim] *= 6
    return encoder


def padded_batch(tokens: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """tokens (B, N, C) -> the same rows cut to counts, the rest filled with large noise (a leak shows)."""
    x = tokens.clone()
    for b, n in enumerate(counts):
        x[b, n:] = 1e3 * torch.randn_like(x[b, n:])
    return x[:, : max(counts)]


def check_alone(encoder, tokens, counts, out, state, r_rows=None, tol=1e-5):
    for b, n in enumerate(counts):
        alone_state = encoder.new_merge_state()
        if r_rows is not None:
            alone_state.count = torch.tensor([n])
        x = tokens[b : b + 1, :n]
        for i, block in enumerate(encoder.blocks):
            if r_rows is not None and block.merge is not None:
                saved = block.merge.r
                block.merge.r = r_rows[i][b : b + 1]
            x = block(x, alone_state)
            if r_rows is not None and block.merge is not None:
                block.merge.r = saved
        alone = encoder.norm(x)[0]
        m = alone.shape[0]
        assert int(state.count[b]) == m, (b, int(state.count[b]), m)
        torch.testing.assert_close(out[b, :m], alone, atol=tol, rtol=tol)
        assert torch.all(state.size[b, m:] == 0) if state.size is not None else True


@pytest.mark.parametrize("model_name", ["umt_tiny", "vificlip_tiny"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("attention", ["explicit", "fused"])
@pytest.mark.parametrize("proportional", [True, False])
def test_padded_equals_alone(model_name, method, attention, proportional):
    framewise = model_name.startswith("vificlip")  # rows are frames: CLS + 16 patches each
    encoder = encoder_of(model_name, method, [3, 2, 0.1] if framewise else [9, 5, 0.1], attention, proportional)
    torch.manual_seed(1)
    shape = list(encoder.example_input(3).shape)
    shape[2] = 1 if framewise else shape[2]
    with torch.no_grad():
        tokens = encoder.embed(torch.randn(shape))
        n = tokens.shape[1]
        counts = [n - 5, n, n - 2] if framewise else [n - 11, n, n - 4]
        state = encoder.new_merge_state()
        state.count = torch.tensor(counts)
        out = run_blocks(encoder, padded_batch(tokens, counts), state)
        check_alone(encoder, tokens, counts, out, state)
        assert state.row_counts().shape == (len(encoder.blocks), 3)
        pooled = state.mean_pool(out)
        for b in range(3):
            m = int(state.count[b])
            torch.testing.assert_close(pooled[b], out[b, :m].mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["tome", "vidtldr", "saliency_drop"])
def test_per_row_r(method):
    """r as a (B,) tensor: each row removes its own count, as it would alone."""
    encoder = encoder_of("umt_tiny", method, [1, 1, 0], "explicit", True)
    blocks = encoder.blocks
    r_rows = [torch.tensor([3, 9, 0]), torch.tensor([5, 1, 7]), None]
    for block, r in zip(blocks, r_rows):
        if block.merge is not None:
            block.merge.r = r
    torch.manual_seed(2)
    with torch.no_grad():
        tokens = encoder.embed(torch.randn(encoder.example_input(3).shape))
        counts = [tokens.shape[1]] * 3
        state = encoder.new_merge_state()
        out = run_blocks(encoder, tokens, state)
        check_alone(encoder, tokens, counts, out, state, r_rows=r_rows)


def test_count_none_path_unchanged():
    """Without counts the merge core runs the fixed-r code: r as int, no RowBudget, the old plan."""
    torch.manual_seed(3)
    metric = torch.randn(2, 21, 8)
    plan = bipartite_soft_matching(metric, 5)
    assert plan.rows is None and plan.src_idx.shape == (2, 5, 1)
    budget = RowBudget(r=torch.tensor([5, 5]), count=torch.tensor([21, 21]))
    row_plan = bipartite_soft_matching(metric, budget)
    assert torch.equal(row_plan.src_idx, plan.src_idx) and torch.equal(row_plan.dst_idx, plan.dst_idx)
    score = torch.randn(2, 21)
    assert torch.equal(drop_lowest(score, budget).keep_idx, drop_lowest(score, 5).keep_idx)


def test_padding_never_matched():
    """A row's padding tokens never merge, receive merges nor survive a drop."""
    metric = torch.randn(2, 20, 8)
    metric[1, 12:] = metric[1, 0]  # padding identical to a real token: the best match if it were allowed
    budget = RowBudget(r=torch.tensor([6, 6]), count=torch.tensor([20, 12]))
    plan = bipartite_soft_matching(metric, budget)
    assert (plan.src_idx[1, :6] < 6).all() and (plan.dst_idx[1, :6] < 6).all()
    keep = drop_lowest(-torch.arange(20.0).expand(2, 20), budget).keep_idx[..., 0]
    assert keep[1, :6].max() < 12 and keep.shape[1] == 14


def test_threshold_needs_matching():
    budget = RowBudget(r=torch.tensor([4]), count=torch.tensor([10]), threshold=0.5)
    with pytest.raises(ValueError, match="threshold mode"):
        drop_lowest(torch.randn(1, 10), budget)


def test_register_is_untouched():
    from vidtldr_pl.merging import METHODS

    assert "tome_grouped" not in METHODS and register_method  # the test's class never joins the table
