"""The configs ship inside the package (configs/ installed as ``vidtldr_pl.configs``): ``--config msrvtt_umt.yaml``
works from any directory and from a non-editable install; the built-in weights ship as package data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vidtldr_pl.cli_help import config_dir
from vidtldr_pl.errors import UsageError
from vidtldr_pl.preflight import resolve_config_args

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


def test_config_lookup_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = resolve_config_args(["--config", "msrvtt_umt.yaml", "--config=configs/strategies/ddp.yaml",
                                "--config", "strategies/deepspeed_zero2.yaml", "--trainer.devices=1"])
    assert args[0] == "--config" and args[2].startswith("--config=") and args[-1] == "--trainer.devices=1"
    found = [Path(args[1]), Path(args[2].split("=", 1)[1]), Path(args[4])]
    assert all(p.is_absolute() for p in found)
    for path, name in zip(found, ["msrvtt_umt.yaml", "strategies/ddp.yaml", "strategies/deepspeed_zero2.yaml"]):
        assert path == config_dir() / name and path.read_text() == (ROOT / "configs" / name).read_text()
    # a file that exists as given wins over a shipped one of the same name
    (tmp_path / "msrvtt_umt.yaml").write_text("trainer: {}\n")
    assert resolve_config_args(["--config", "msrvtt_umt.yaml"]) == ["--config", "msrvtt_umt.yaml"]


def test_missing_config_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"config file not found: nope\.yaml; `python evaluate.py --help` lists the "
                                         r"\d+ shipped configs"):
        resolve_config_args(["--config", "nope.yaml"])
    with pytest.raises(UsageError, match="config file not found: /abs/msrvtt_umt.yaml"):
        resolve_config_args(["--config=/abs/msrvtt_umt.yaml"])  # an absolute path is never swapped for a shipped file


@pytest.mark.slow
def test_wheel_ships_configs_and_weights_and_finds_them_from_elsewhere(tmp_path):
    """Build the wheel (from a copy of the sources: building writes build/ and *.egg-info next to them), unpack it
    as pip would, and resolve configs with that copy of the package from an unrelated directory."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("vidtldr_pl", "data_modules", "configs"):  # data_modules/ ships as vidtldr_pl.data_modules
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--no-cache-dir", "-q", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("vidtldr_pl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert {f"vidtldr_pl/configs/{n}" for n in SHIPPED} <= names
    assert {"vidtldr_pl/configs/__init__.py", "vidtldr_pl/weights/umt_demo_synthetic.safetensors",
            "vidtldr_pl/weights/umt_demo_synthetic.json"} <= names
    assert "vidtldr_pl/data_modules/video.py" in names
    # one name in site-packages: no generic top-level package (data_modules/ ships inside vidtldr_pl)
    assert {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))} == {"vidtldr_pl"}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, vidtldr_pl; from vidtldr_pl.cli_help import config_dir; "
            "from vidtldr_pl.preflight import resolve_config_args; "
            "print(json.dumps([vidtldr_pl.__file__, str(config_dir()), "
            "resolve_config_args(['--config', 'msrvtt_umt.yaml', '--config', 'configs/strategies/ddp.yaml'])]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    package, folder, args = json.loads(run.stdout.strip().splitlines()[-1])
    site = (tmp_path / "site" / "vidtldr_pl").resolve()
    assert Path(package).resolve().parent == site and Path(folder).resolve() == site / "configs"
    assert Path(args[1]).resolve() == site / "configs" / "msrvtt_umt.yaml"
    assert Path(args[3]).resolve() == site / "configs" / "strategies" / "ddp.yaml"
    assert Path(args[1]).read_text() == (ROOT / "configs" / "msrvtt_umt.yaml").read_text()
