"""Usage errors and --help answer before torch is imported: one ``error:`` line, exit code 2, a "did you mean" for
a typo, every missing input at once; the installed entry points (``vidtldr-evaluate`` / ``vidtldr-train``,
``python -m vidtldr_pl.evaluate`` / ``.train``) do what evaluate.py / train.py do, from any folder.

Each command runs as a user types it, in a subprocess, with ``-X importtime`` so that the test can see which
modules it imported (a speed goal checked by what is imported, not by a clock)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, timeout: int = 120) -> tuple[int, str, str, set[str]]:
    """(exit code, stdout, stderr without the import trace, the top-level packages imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPROFILEIMPORTTIME",))}
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    trace = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    stderr = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in trace}
    return proc.returncode, proc.stdout, stderr.strip(), imported


def entry(kind: str) -> list[str]:
    return {"evaluate.py": [str(ROOT / "evaluate.py")], "train.py": [str(ROOT / "train.py")],
            "-m evaluate": ["-m", "vidtldr_pl.evaluate"], "-m train": ["-m", "vidtldr_pl.train"]}[kind]


ENTRIES = ["evaluate.py", "train.py", "-m evaluate", "-m train"]


@pytest.mark.parametrize("kind", ENTRIES)
def test_missing_config_one_line_exit_2_no_torch(kind, tmp_path):
    code, out, err, imported = run([*entry(kind), "--config", "demo_um.yaml"], tmp_path)
    assert code == 2 and err == ("error: config file not found: demo_um.yaml (did you mean demo_umt.yaml?); "
                                 "`python evaluate.py --help` lists the 44 shipped configs".replace(
                                     "44", str(len(list((ROOT / "configs").rglob("*.yaml"))))))
    assert "torch" not in imported and "lightning" not in imported


def test_option_typo_did_you_mean(tmp_path):
    code, _, err, imported = run([*entry("evaluate.py"), "--config", "demo_umt.yaml", "--trainr.max_epochs=3"],
                                 tmp_path)
    assert code == 2 and err.startswith("error: unknown option --trainr.max_epochs (did you mean "
                                        "--trainer.max_epochs?)") and "\n" not in err
    assert "torch" not in imported


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: x\n  init_args: [a\n")
    code, _, err, imported = run([*entry("train.py"), "--config", str(bad)], tmp_path)
    assert code == 2 and err.startswith(f"error: config file {bad}: YAML syntax error at line 4") and "\n" not in err
    assert "torch" not in imported
    bad.write_text("modle: {}\n")
    code, _, err, _ = run([*entry("train.py"), "--config", str(bad)], tmp_path)
    assert code == 2 and f"config file {bad}: unknown key 'modle' (did you mean model?)" in err


def test_all_missing_inputs_reported_at_once(tmp_path):
    code, _, err, imported = run([*entry("-m evaluate"), "--config", "msrvtt_umt.yaml",
                                  "--data.init_args.data_root=/no/msrvtt", "--model.init_args.checkpoint=/no/ft.pth"],
                                 tmp_path)
    assert code == 2 and "\n" not in err and err.startswith("error: 2 problems: (1) data root /no/msrvtt")
    assert "(--data.init_args.data_root)" in err and "(2) checkpoint file not found: /no/ft.pth" in err
    assert "torch" not in imported


def test_missing_extra_is_named_first(monkeypatch):
    from vidtldr_pl import preflight

    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None if name == "open_clip" else real(name))
    with pytest.raises(preflight.UsageError, match=r"model vificlip_demo needs the vificlip extra \(open_clip is not "
                                                   r"installed\): pip install 'vidtldr-pl\[vificlip\]'"):
        preflight.check(["--config", "demo_vificlip.yaml"], "evaluate")


@pytest.mark.parametrize("module", ["evaluate", "train", "sweep", "tools/visualize.py", "search", "flops.report"])
def test_help_of_every_entry_point_without_torch(module, tmp_path):
    command = [str(ROOT / module)] if module.endswith(".py") else ["-m", f"vidtldr_pl.{module}"]
    code, out, _, imported = run([*command, "--help"], tmp_path)
    assert code == 0 and "usage:" in out
    assert "torch" not in imported and "lightning" not in imported


def test_installed_console_scripts_from_another_folder(tmp_path):
    for name, word in (("vidtldr-evaluate", "Evaluate a video model"), ("vidtldr-train", "Fine-tune a video model")):
        proc = subprocess.run([str(BIN / name), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0 and word in proc.stdout, proc.stderr
    proc = subprocess.run([str(BIN / "vidtldr-evaluate"), "--config", "nope.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: config file not found: nope.yaml")


@pytest.mark.slow
def test_deep_option_typo_and_bad_value_one_line(tmp_path):
    code, _, err, _ = run([*entry("evaluate.py"), "--config", "demo_umt.yaml", "--model.init_args.chekpoint=x"],
                          tmp_path)
    assert code == 2 and err.splitlines()[-1] == ("error: --model.init_args.chekpoint: not an option of "
                                                  "vidtldr_pl.tasks.RetrievalTask (did you mean checkpoint?)")
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    code, _, err, _ = run([*entry("train.py"), "--config", "demo_umt.yaml", "--model.init_args.lr=abc"], tmp_path)
    assert code == 2 and err.splitlines()[-1].startswith("error: --model.init_args.lr: Expected a <class 'float'>")
    assert len([line for line in err.splitlines() if line.strip()]) <= 4  # no usage dump


def test_catalog_names_match_the_tables():
    from vidtldr_pl.catalog import FAMILY_NAMES, METHOD_NAMES
    from vidtldr_pl.explore.families import FAMILIES
    from vidtldr_pl.merging import METHODS

    assert tuple(METHODS) == METHOD_NAMES and tuple(FAMILIES) == FAMILY_NAMES
