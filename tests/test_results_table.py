"""evaluate.py's comparison table: each task's metrics, then GFLOPs (ratio to the first row), tokens per layer and
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
    return {"name": name, "method": name, "r": None, "layers": None, "gflops": gflops, "tokens_per_layer": tokens,
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
