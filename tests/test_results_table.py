"""evaluate.py's comparison table: each task's metrics, then GFLOPs (ratio to the unmerged row, else to the first
row, said in the header), tokens per layer and
throughput."""
from __future__ import annotations

import io

from rich.console import Console

from vidtldr_pl.compare import results_table


def _render(rows) -> tuple[list[str], str]:
    table = results_table(rows, "t")
    out = io.StringIO()
    Console(file=out, width=300).print(table)
    return [c.header for c in table.columns], out.getvalue()


def _row(name: str, gflops: float, tokens: list[int], **metrics) -> dict:
    return {"name": name, "method": "none" if name == "no merging" else name, "r": None, "layers": None, "gflops": gflops, "tokens_per_layer": tokens,
            "videos_per_s": 10.0, "num_questions": 500, "num_missing": 0, **metrics}


def test_qa_rows_show_accuracy_per_type_tokens_and_speed():
    rows = [_row("no merging", 2.0, [288] * 2, **{"acc": 81.2, "acc/colour": 99.0, "acc/count": 62.0}),
            _row("ToMe", 1.0, [216, 180], **{"acc": 70.0, "acc/colour": 90.0, "acc/count": 50.0})]
    headers, text = _render(rows)
    assert headers == ["method", "acc", "colour", "count", "GFLOPs", "tokens per layer", "videos/s"]
    assert "81.20" in text and "62.00" in text and "1.00 (2.00x)" in text and "216 180" in text
    assert "num_questions" not in text


def test_classification_and_other_rows():
    headers, _ = _render([_row("a", 1.0, [4], top1=50.0, top5=90.0)])
    assert headers[:3] == ["method", "top-1", "top-5"] and headers[-1] == "views/s"
    headers, _ = _render([{"name": "a", "method": "x", "loss": 0.5, "gflops": 1.0}])
    assert headers == ["method", "loss", "gflops"]


def test_dual_encoder_retrieval_rows_show_the_itc_ranking():
    keys = ("img_r1", "img_r5", "img_r10", "img_MdR", "txt_r1", "txt_r5", "txt_r10", "txt_MdR")
    headers, text = _render([_row("none", 1.7, [37] * 6, **{f"itc/{k}": 40.0 for k in keys})])
    assert headers[:3] == ["method", "t2v R@1", "t2v R@5"] and headers[-1] == "videos/s" and "40.00" in text


def test_ratio_is_against_the_unmerged_row_wherever_it_is():
    rows = [_row("ToMe", 1.0, [216], top1=1.0, top5=2.0), _row("no merging", 2.0, [288], top1=1.0, top5=2.0),
            _row("vid-TLDR", 0.5, [100], top1=1.0, top5=2.0)]
    headers, text = _render(rows)
    assert "GFLOPs/view" in headers and "1.00 (2.00x)" in text and "0.50 (4.00x)" in text


def test_without_an_unmerged_row_the_header_names_the_reference():
    rows = [_row("ToMe", 1.0, [216], top1=1.0, top5=2.0), _row("vid-TLDR", 0.5, [100], top1=1.0, top5=2.0)]
    headers, text = _render(rows)
    assert "GFLOPs/view (x: vs ToMe)" in headers and "0.50 (2.00x)" in text


def test_unmeasured_throughput_says_why_never_zero():
    row = _row("no merging", 2.0, [288], top1=1.0, top5=2.0)
    row["videos_per_s"] = None
    _, text = _render([row])
    assert "n/a (one batch)" in text and " 0.0 " not in text


def test_one_batch_rows_after_the_first_are_timed():
    """The warm-up is an encoder's first call in the process, not each row's first batch: in a comparison whose
    split is one batch, the first row says n/a and the later rows are measured (never 0.0)."""
    from retrieval_bruteforce import TinyRetrievalData, make_task, make_trainer

    from vidtldr_pl.compare import evaluate_runs
    from vidtldr_pl.merging import MergeSetting

    task, data = make_task(k_test=4), TinyRetrievalData(num_videos=6, batch_size=6)
    rows = evaluate_runs(make_trainer(), task, data, [MergeSetting(method="none", name="none"),
                                                       MergeSetting(method="tome", r=[8], name="ToMe")], "test")
    assert rows[0]["videos_per_s"] is None
    assert isinstance(rows[1]["videos_per_s"], float) and rows[1]["videos_per_s"] > 0
    _, text = _render(rows)
    assert "n/a (one batch)" in text
