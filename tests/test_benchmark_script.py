"""benchmarks/encoder_throughput.py end to end on CPU: a tiny UMT, all five rows, --check and --write."""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "encoder_throughput.py"
ROW_LABELS = [("reference", "none"), ("reference", "vid-TLDR"), ("fast", "none"), ("fast", "ToMe"), ("fast", "vid-TLDR")]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("encoder_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _sections(text: str) -> dict[str, str]:
    """Markdown text -> {heading line: the section's text up to the next '## ' heading} (preamble under '')."""
    parts = re.split(r"(?m)^(?=## )", text)
    return {p.splitlines()[0] if p.startswith("## ") else "": p for p in parts}


def _markdown_rows(section: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows[1:]]  # drop the header row


def test_cpu_run_all_rows_check_and_write(bench, tmp_path, capsys):
    md = tmp_path / "BENCHMARKS.md"
    shutil.copy(ROOT / "BENCHMARKS.md", md)
    original = md.read_text()
    argv = ["--model", "umt_tiny", "--frames", "4", "--batch", "1", "2", "--dtype", "fp32", "--iters", "1",
            "--warmup", "1", "--profile-iters", "1", "--threads", "1", "--device", "cpu", "--check",
            "--write", str(md)]
    report = bench.main(argv)
    out = capsys.readouterr().out

    # every (batch, row) measured, positive throughput, merging lowers the FLOPs of its path
    assert [(r.batch, r.spec.path, r.spec.label) for r in report.results] == [(b, *lab) for b in (1, 2) for lab in ROW_LABELS]
    by_key = {(r.spec.key, r.batch): r for r in report.results}
    for r in report.results:
        assert r.error is None and r.videos_per_s > 0 and r.ms_per_batch > 0
        if r.spec.method == "none":
            assert r.merge_share is None and r.tokens_per_layer == [64] * 4
        else:
            base = by_key[("ref-none" if r.spec.path == "reference" else "fast-none", r.batch)]
            assert r.gflops < base.gflops and r.tokens_per_layer == [32, 16, 8, 8]
            assert 0 < r.merge_share < 1 and r.vs_no_merge > 0
    fast_vidtldr = by_key[("fast-vidtldr", 2)]
    assert fast_vidtldr.vs_ref_vidtldr == pytest.approx(fast_vidtldr.videos_per_s / by_key[("ref-vidtldr", 2)].videos_per_s)
    assert "umt_tiny vision encoder" in out and "videos/s" in out and "merge %" in out

    # --check: same tokens per layer, outputs equal to float32 rounding
    (check,) = report.checks
    assert check.same_tokens and check.tokens_fast == [32, 16, 8, 8]
    assert check.max_abs_diff < 1e-4 and check.max_abs_diff_pooled < 1e-4
    assert check.same_sources and check.saliency_rel_err <= 1e-5 and check.saliency_backend == "chunked"
    assert "same tokens per layer: yes" in out and "max |ref - fast| =" in out

    # --write: the section is appended, every other byte of the file is kept
    text = md.read_text()
    assert text.startswith(original) and text.count(bench.SECTION) == 1
    section = _sections(text)[bench.SECTION]
    assert "Command: `python benchmarks/encoder_throughput.py --model umt_tiny --frames 4 --batch 1 2" in section
    assert "same tokens per layer: yes" in section and "torch " in section and "Lightning " in section
    rows = _markdown_rows(section)
    assert [(row[0], row[1], row[3]) for row in rows] == [(p, m, str(b)) for b in (1, 2) for p, m in ROW_LABELS]
    vps_col = bench.COLUMNS.index("videos/s")
    assert all(float(row[vps_col]) > 0 for row in rows)

    # a second --write replaces the section in place (here with a section after it)
    md.write_text(text + "\n## Later section\n\nkept as is\n")
    bench.write_section(md, "new body")
    new = _sections(md.read_text())
    old = _sections(text + "\n## Later section\n\nkept as is\n")
    assert new[bench.SECTION] == f"{bench.SECTION}\n\nnew body\n\n"
    assert {k: v for k, v in new.items() if k != bench.SECTION} == {k: v for k, v in old.items() if k != bench.SECTION}


def test_write_section_in_the_middle_and_missing(bench, tmp_path):
    md = tmp_path / "B.md"
    before, after = "# Benchmarks\n\n## A\n\na  \n\n", "## Z\n\n| z |\n"
    md.write_text(before + "## Encoder throughput\n\nold\ntext\n\n" + after)
    bench.write_section(md, "fresh")
    assert md.read_text() == before + "## Encoder throughput\n\nfresh\n\n" + after
    md.write_text("# Benchmarks\n\n## Encoder throughput (notes)\n\nx")  # another heading is not the section
    bench.write_section(md, "fresh")
    assert md.read_text() == "# Benchmarks\n\n## Encoder throughput (notes)\n\nx\n\n## Encoder throughput\n\nfresh\n"


def test_flex_rows_on_request(bench):
    argv = ["--model", "umt_tiny", "--frames", "4", "--batch", "1", "--dtype", "fp32", "--iters", "1", "--warmup", "0",
            "--profile-iters", "0", "--threads", "1", "--device", "cpu", "--rows", "ref-vidtldr", "flex-none", "flex-vidtldr"]
    report = bench.main(argv)
    rows = {r.spec.key: r for r in report.results}
    assert list(rows) == ["ref-vidtldr", "flex-none", "flex-vidtldr"]
    assert all(r.error is None and r.videos_per_s > 0 for r in rows.values())
    flex = rows["flex-vidtldr"]
    assert flex.tokens_per_layer == [32, 16, 8, 8] and flex.gflops < rows["flex-none"].gflops
    assert flex.vs_no_merge == pytest.approx(flex.videos_per_s / rows["flex-none"].videos_per_s)
    assert flex.vs_ref_vidtldr == pytest.approx(flex.videos_per_s / rows["ref-vidtldr"].videos_per_s)


def test_other_methods_on_request_into_their_own_section(bench, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Encoder throughput\n\nkept\n")
    heading = "## Encoder throughput: Representation Shift"
    rows = ["fast-none", "fast-vidtldr", "fast-vidtldr_repshift", "fast-random_drop", "fast-saliency_drop",
            "fast-repshift_drop"]
    argv = ["--model", "umt_tiny", "--frames", "4", "--batch", "1", "--dtype", "fp32", "--iters", "1", "--warmup", "0",
            "--profile-iters", "1", "--threads", "1", "--device", "cpu", "--rows", *rows, "--write", str(md),
            "--section", heading]
    report = bench.main(argv)
    by_key = {r.spec.key: r for r in report.results}
    assert list(by_key) == rows and all(r.error is None and r.videos_per_s > 0 for r in by_key.values())
    for key in rows[1:]:
        assert by_key[key].tokens_per_layer == [32, 16, 8, 8] and by_key[key].gflops < by_key["fast-none"].gflops
    # the shift saliency needs no q / k pass: fewer FLOPs than fast vid-TLDR; the drops after the MLP pay it
    assert by_key["fast-vidtldr_repshift"].gflops < by_key["fast-vidtldr"].gflops
    assert by_key["fast-repshift_drop"].gflops > by_key["fast-random_drop"].gflops
    assert by_key["fast-vidtldr_repshift"].vs_ref_vidtldr is None  # no reference row in this run
    sections = _sections(md.read_text())
    assert sections["## Encoder throughput"] == "## Encoder throughput\n\nkept\n\n"
    labels = [row[1] for row in _markdown_rows(sections[heading])]
    assert labels == ["none", "vid-TLDR", "vid-TLDR RepShift", "random drop", "saliency drop", "RepShift drop"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--section", "Encoder"])
