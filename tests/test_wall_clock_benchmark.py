"""benchmarks/wall_clock.py: the --quick run's tables and JSON (structure only, no timing assertions), the merge-time
split, batches that do not fit, and one-line errors for bad options."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "wall_clock.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def wall_clock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wall_clock", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("wall_clock")
    proc = _run("--quick", "--threads", "1", "--methods", "none", "tome", "vidtldr", "--schedules", "front:16;8,8",
                "--out", str(out), cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "wall_clock.json").read_text()), (out / "wall_clock.md").read_text()


def test_quick_json_rows(quick):
    data, _ = quick
    cfg = data["config"]
    assert cfg["model"] == "umt_tiny" and cfg["batches"] == [1, 2] and cfg["attentions"] == ["fused", "explicit"]
    assert [s["label"] for s in data["schedules"]] == ["front:16", "[8,8]"]
    assert [s["r"] for s in data["schedules"]] == [[16, 8, 4, 0], [8, 8, 0, 0]]
    rows = data["rows"]
    cells = {(r["dtype"], r["attention"], r["method"], r["schedule"], r["batch"]) for r in rows}
    settings = [("none", "-"), ("tome", "front:16"), ("tome", "[8,8]"), ("vidtldr", "front:16"), ("vidtldr", "[8,8]")]
    assert cells == {(d, a, m, s, b) for d in ("fp32", "bf16") for a in ("fused", "explicit") for m, s in settings
                     for b in (1, 2)}
    assert len(rows) == len(cells)
    base = {(r["dtype"], r["attention"], r["batch"]): r for r in rows if r["method"] == "none"}
    for r in rows:
        assert r["status"] == "ok" and r["videos_per_s"] > 0 and r["ms_per_batch"] > 0, r
        assert r["ms_min"] <= r["ms_per_batch"] <= r["ms_max"]
        if r["method"] == "none":
            assert r["tokens_per_layer"] == [64] * 4
            assert r["merge_ms_per_batch"] is None and r["merge_share"] is None and r["vs_none"] is None
        else:
            assert r["tokens_per_layer"] == ([48, 40, 36, 36] if r["schedule"] == "front:16" else [56, 48, 48, 48])
            assert 0 < r["merge_share"] < 1 and r["merge_ms_per_batch"] > 0
            assert r["gflops"] < base[(r["dtype"], r["attention"], r["batch"])]["gflops"]
            assert r["vs_none"] == pytest.approx(
                r["videos_per_s"] / base[(r["dtype"], r["attention"], r["batch"])]["videos_per_s"])


def test_quick_markdown(quick):
    data, md = quick
    assert md.startswith("## Wall-clock truth\n")
    assert f"Command: `{data['command']}`" in md and "load average" in md
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in md.split("\n\n")]
    tables = [t for t in tables if t]
    speedups, cells = tables
    assert speedups[0] == "| attention | dtype | method | schedule | batch 1 | batch 2 |"
    assert len(speedups) == 2 + 2 * 2 * 4  # dtype x attention x (2 methods x 2 schedules)
    assert all(c.strip().endswith("%)") for line in speedups[2:] for c in line.split("|")[5:7])
    assert cells[0].startswith("| attention | dtype | batch | method | schedule |")
    assert len(cells) == 2 + len(data["rows"])
    none_rows = [line for line in cells[2:] if line.split("|")[4].strip() == "none"]
    assert len(none_rows) == 8 and all(line.split("|")[10:13] == [" - "] * 3 for line in none_rows)


def test_batch_that_does_not_fit_is_skipped(wall_clock, monkeypatch):
    real = wall_clock.time_row

    def fake(encoder, row, video, cfg):
        if row.batch >= 2 and row.method == "vidtldr":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        real(encoder, row, video, cfg)

    monkeypatch.setattr(wall_clock, "time_row", fake)
    cfg = wall_clock.WallClockConfig(model="umt_tiny", frames=4, methods=("none", "vidtldr"), batches=(1, 2, 4),
                                     dtypes=("fp32",), attentions=("sdpa",), iters=1, warmup=0, profile_iters=1)
    report = wall_clock.run(cfg, "cpu", log=lambda _: None)
    rows = {(r.method, r.batch): r for r in report.rows}
    assert cfg.attentions == ("fused",)  # sdpa is the fused kernel
    assert all(rows[("none", b)].status == "ok" for b in (1, 2, 4))
    assert rows[("vidtldr", 1)].status == "ok" and 0 < rows[("vidtldr", 1)].merge_share < 1
    assert (rows[("vidtldr", 2)].status, rows[("vidtldr", 2)].note) == ("skipped", "out of memory")
    assert (rows[("vidtldr", 4)].status, rows[("vidtldr", 4)].note) == ("skipped", "batch 2 did not fit in memory")
    assert rows[("vidtldr", 2)].videos_per_s is None and rows[("vidtldr", 4)].vs_none is None
    table = "\n".join(wall_clock.speedup_table(report.rows, cfg.batches))
    assert "out of memory" in table and "batch 2 did not fit in memory" in table


def test_time_guard_skips_the_rest(wall_clock):
    cfg = wall_clock.WallClockConfig(model="umt_tiny", frames=4, methods=("none",), batches=(1,), dtypes=("fp32",),
                                     attentions=("fused",), iters=1, warmup=0)
    report = wall_clock.run(cfg, "cpu", deadline=0.0, log=lambda _: None)
    assert [(r.status, r.note) for r in report.rows] == [("skipped", "time guard")]


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "none", "no_such_method"], "--methods 'no_such_method'"),
    (["--attention", "flash"], "--attention 'flash'"),
    (["--schedules", "front:x"], "'x' is not a whole number"),
    (["--schedules", "1,1,1,1,1,1"], "needs 1 to 4 entries"),
    (["--batch", "0"], "--batch 0"),
    (["--model", "nope"], "--model 'nope'"),
])
def test_bad_options_one_line_exit_2(args, message, wall_clock, capsys):
    """In this process (main, as the script's entry point calls it); the subprocess path is the test below."""
    with pytest.raises(SystemExit) as exit_info:
        wall_clock.main(["--quick", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: wall_clock: ") and message in last and "Traceback" not in err


def test_a_bad_option_exits_2_from_the_command_line(tmp_path):
    proc = _run("--quick", "--methods", "none", "no_such_method", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: wall_clock: ") and "--methods 'no_such_method'" in last


def test_compiled_rows(wall_clock):
    cfg = wall_clock.WallClockConfig(model="umt_tiny", frames=4, methods=("none", "vidtldr"), schedules="16,8,4",
                                     batches=(1,), dtypes=("fp32",), attentions=("fused",), iters=1, warmup=1,
                                     profile_iters=1, compile=True, compile_backend="eager")
    report = wall_clock.run(cfg, "cpu", log=lambda _: None)
    assert [(r.method, r.schedule, r.status, r.compiled) for r in report.rows] == [
        ("none", "-", "ok", True), ("vidtldr", "[16,8,4]", "ok", True)]
    assert 0 < report.rows[1].merge_share < 1 and report.rows[1].vs_none > 0
    assert "torch.compile (backend eager)" in wall_clock.caption(report)
