"""benchmarks/gpu_suite.py --dry-run: every part at tiny sizes on CPU (DeepSpeed skipped, its fit command parsed),
one JSON report, one table, the BENCHMARKS.md section; the time guard, per-part errors and the target verdicts."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry(suite, tmp_path_factory) -> tuple[dict, Path, Path]:
    """One dry run: (report, JSON file, BENCHMARKS.md copy it wrote its section into)."""
    tmp = tmp_path_factory.mktemp("gpu_suite")
    md = tmp / "BENCHMARKS.md"
    shutil.copy(ROOT / "BENCHMARKS.md", md)
    out = tmp / "suite.json"
    report = suite.main(["--dry-run", "--threads", "1", "--json", str(out), "--write", str(md),
                         "--workdir", str(tmp / "work")])
    return report, out, md


def _section(text: str, heading: str) -> str:
    parts = re.split(r"(?m)^(?=## )", text)
    (section,) = [p for p in parts if p.splitlines()[0] == heading]
    return section


def test_dry_run_parts(suite, dry):
    report, _, _ = dry
    parts = report["parts"]
    assert report["dry_run"] and set(parts) == set("abcdefg")
    assert {k: p["status"] for k, p in parts.items()} == {"a": "ok", "b": "ok", "c": "skipped", "d": "ok", "e": "ok",
                                                          "f": "ok", "g": "ok"}
    assert all(p["seconds"] >= 0 for p in parts.values())

    # (a): every cell x row measured, merging lowers FLOPs and tokens, ratios are the measured ones
    cfg = suite.dry_config()
    methods, _ = suite.available_methods()
    expected = {(m, s.key, f, b, d) for m, f, b, d, _, specs in suite.encoder_cells(cfg, methods) for s in specs}
    rows = parts["a"]["rows"]
    assert {(r["model"], r["key"], r["frames"], r["batch"], r["dtype"]) for r in rows} == expected
    assert {r["model"] for r in rows} == {"umt_tiny", "videomae_tiny"}
    assert {r["attention"] for r in rows} == {"explicit", "fused", "flex"}
    index = {(r["model"], r["key"], r["batch"], r["dtype"]): r for r in rows}
    for r in rows:
        assert r["error"] is None and r["videos_per_s"] > 0, r
        base = index[(r["model"], r["key"].split("-")[0] + "-none", r["batch"], r["dtype"])]
        if r["method"] == "none":
            assert r["tokens_per_layer"] == [64] * 4 and r["merge_share"] is None
        else:
            assert r["tokens_per_layer"] == [48, 40, 36, 36] and r["gflops"] < base["gflops"]
            assert 0 < r["merge_share"] < 1
            assert r["vs_no_merge"] == pytest.approx(r["videos_per_s"] / base["videos_per_s"])

    # (b): the chunked path on CPU against float64 and the official block-stack fixtures; Triton said not run
    b = parts["b"]
    assert b["backend"] == "chunked" and b["pass"]
    assert len(b["kernel_cases"]) == len(cfg.kernel_cases) and all(c["pass"] for c in b["kernel_cases"])
    assert set(b["fixtures"]) == set(suite.BLOCK_CASES) and all(e["tokens_ok"] for e in b["fixtures"].values())
    check = b["encoder_check"]
    assert check["pass"] and check["tokens_ref"] == check["tokens_fast"] == [48, 40, 36, 36]
    assert "need CUDA" in b["triton"]

    # (c): skipped with the reason; the ZeRO-2 fit command parses, with the strategy and vid-TLDR active
    c = parts["c"]
    assert "needs CUDA" in c["reason"] and c["config_check"]["pass"], c["config_check"]
    for stage in (2, 3):
        cmds = c["commands"][f"zero{stage}"]
        assert f"configs/strategies/deepspeed_zero{stage}.yaml" in cmds["fit"]
        assert "configs/demo_umt.yaml" in cmds["fit"]
        assert "vidtldr_pl.export" in cmds["export"]
        assert "evaluate.py" in cmds["evaluate"] and "--model.init_args.checkpoint=" in cmds["evaluate"]

    # (d): a training step per method, finite losses, merged encoders keep fewer tokens
    d = {r["method"]: r for r in parts["d"]["rows"]}
    assert list(d) == ["none", *methods]
    assert all(r["loss_finite"] and r["videos_per_s"] > 0 for r in d.values())
    assert d["none"]["tokens_per_layer"] == [64] * 4 and d["vidtldr"]["tokens_per_layer"] == [48, 40, 36, 36]

    # (e): both settings compiled as one graph, equal to eager
    e = {r["key"]: r for r in parts["e"]["rows"]}
    assert set(e) == {"fast-none", "fast-vidtldr"}
    assert all(r["graphs"] == 1 and r["max_abs_diff"] <= 1e-5 and r["compile_s"] > 0 for r in e.values())

    # (f): wall clock, every method x batch 1 / 2 x dtype x attention; merge share for merging methods only
    f = parts["f"]["rows"]
    assert len(f) == 5 * 2 * 2 * 2 and all(r["status"] == "ok" and r["videos_per_s"] > 0 for r in f)
    assert all((r["merge_share"] is None) == (r["method"] == "none") for r in f)
    assert all(0 < r["merge_share"] < 1 and r["vs_none"] > 0 for r in f if r["method"] != "none")


def test_dry_run_targets_follow_the_rows(suite, dry):
    report, _, _ = dry
    targets = {t["name"]: t for t in report["targets"]}
    rows = report["parts"]["a"]["rows"]
    frames, batch, dtype = report["config"]["target"]
    fast = suite._find(rows, "umt_tiny", "fast-vidtldr", frames, batch, dtype)
    speed = targets["fast vid-TLDR vs fast no merging"]
    assert speed["status"] == ("PASS" if fast["vs_no_merge"] >= 1.6 else "FAIL")
    assert speed["measured"] == f"{fast['vs_no_merge']:.2f}"
    assert targets["peak memory (GiB)"]["status"] == "NOT MEASURED"  # no peak memory on CPU
    share = targets["merge step share of encoder time"]
    assert share["status"] == ("PASS" if fast["merge_share"] <= 0.10 else "FAIL")
    assert len(report["targets"]) == 5


def test_json_table_and_section(suite, dry, tmp_path, capsys):
    report, out, md = dry
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    original = (ROOT / "BENCHMARKS.md").read_text()
    text = md.read_text()
    assert text.count(suite.SECTION + "\n") == 1
    section = _section(text, suite.SECTION)
    assert "DRY RUN" in section and "Command: `python benchmarks/gpu_suite.py --dry-run" in section
    assert "torch " in section and "lightning " in section
    cells = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| (") or
             line.startswith("| target")]
    assert {"(a)", "(b)", "(c)", "(d)", "(e)", "target"} <= set(cells)
    # other sections unchanged
    assert {k: v for k, v in _split(text).items() if k != suite.SECTION} == \
        {k: v for k, v in _split(original).items() if k != suite.SECTION}

    # --render: the same section again from the JSON alone
    again = tmp_path / "B.md"
    again.write_text("# Benchmarks\n")
    suite.main(["--render", str(out), "--write", str(again)])
    assert _section(again.read_text(), suite.SECTION).rstrip() == section.rstrip()
    assert "GPU suite (DRY RUN" in capsys.readouterr().out


def _split(text: str) -> dict[str, str]:
    parts = re.split(r"(?m)^(?=## )", text)
    return {p.splitlines()[0] if p.startswith("## ") else "": p.rstrip() for p in parts}


def test_part_errors_stay_in_their_part_and_time_guard(suite, tmp_path):
    missing = tmp_path / "no_fixtures"
    report = suite.main(["--dry-run", "--threads", "1", "--parts", "b", "d", "--fixtures", str(missing)])
    parts = report["parts"]
    assert parts["b"]["status"] == "error" and str(missing) in parts["b"]["error"]
    assert parts["d"]["status"] == "ok"
    assert all(parts[k]["status"] == "skipped" and "not selected" in parts[k]["reason"] for k in "ace")
    assert {t["status"] for t in report["targets"]} == {"NOT MEASURED"}

    report = suite.main(["--dry-run", "--parts", "d", "--budget", "0"])
    assert report["parts"]["d"]["status"] == "skipped" and "time guard" in report["parts"]["d"]["reason"]


def test_part_deadline_skips_remaining_cells(suite, tmp_path):
    cfg = suite.dry_config()
    ctx = suite.Context(cfg, suite.torch.device("cpu"), True, tmp_path, tmp_path, deadline=0.0)  # long past
    result = suite.part_encoder(ctx)
    assert result["status"] == "partial" and not result["rows"]
    assert len(result["skipped"]) == len(suite.encoder_cells(cfg, suite.available_methods()[0]))


def test_targets_verdicts(suite):
    def row(key, batch, vps, **kw):
        base = {"model": "umt_b16", "key": key, "frames": 12, "batch": batch, "dtype": "bf16", "videos_per_s": vps,
                "error": None, "vs_no_merge": None, "vs_ref_vidtldr": None, "peak_gib": 2.0, "merge_share": None}
        return {**base, **kw}

    rows = [row("fast-vidtldr", 32, 640.0, vs_no_merge=1.62, vs_ref_vidtldr=5.3, peak_gib=3.1, merge_share=0.08),
            row("fast-vidtldr", 1, 150.0, vs_no_merge=0.9, merge_share=0.3)]
    report = {"config": {"model": "umt_b16", "target": [12, 32, "bf16"], "batches": [32, 1], "frames": [12, 8]},
              "parts": {"a": {"rows": rows}}}
    verdicts = [(t["name"], t["measured"], t["status"]) for t in suite.evaluate_targets(report)]
    assert verdicts == [
        ("fast vid-TLDR vs fast no merging", "1.62", "PASS"),
        ("fast vid-TLDR vs explicit vid-TLDR", "5.30", "FAIL"),
        ("peak memory (GiB)", "3.10", "PASS"),
        ("merge step share of encoder time", "0.080", "PASS"),
        ("batch 1: merged vs unmerged (videos/s ratio)", "0.90", "FAIL"),
        ("batch 1: merged vs unmerged (videos/s ratio)", "row missing or failed", "NOT MEASURED"),  # 8 frames
    ]


def test_method_list_is_extensible(suite, monkeypatch):
    monkeypatch.setattr(suite, "FAST_METHODS", ["tome", "vidtldr", "random", "not_registered_yet"])
    methods, missing = suite.available_methods()
    assert methods == ["tome", "vidtldr", "random"] and missing == ["not_registered_yet"]
    keys = [s.key for s in suite.umt_specs(methods)]
    assert "fast-random" in keys and keys.count("fast-none") == 1


def test_without_cuda_or_a_report_one_line_exit_2(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for args, message in ((["--parts", "a"], "error: gpu_suite: CUDA is not available here; use --dry-run"),
                          (["--render", str(tmp_path / "nope.json")], "error: gpu_suite: --render")):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
