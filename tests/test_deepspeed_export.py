"""vidtldr_pl.export on real DeepSpeed ZeRO-2 / ZeRO-3 checkpoint folders, written on the CPU by
tests/deepspeed_ckpt_script.py in Lightning's layout (CKPT/latest, CKPT/checkpoint/*_states.pt) after two optimizer
steps: the exported weights are the trained fp32 weights, every tensor, and create_model / RetrievalTask load them."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vidtldr_pl.backbones import create_model
from vidtldr_pl.errors import CheckpointError
from vidtldr_pl.export import export, umt_state_from_checkpoint
from vidtldr_pl.tasks import RetrievalTask

SCRIPT = Path(__file__).resolve().parent / "deepspeed_ckpt_script.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["zero2", "zero3", "zero2-legacy-wrapper"])
def ds_checkpoint(request, tmp_path_factory):
    """(checkpoint folder, {"init", "trained", ...}) from one run of the script: ZeRO-2, ZeRO-3, and ZeRO-2 with the
    ``_forward_module`` wrapper of Lightning < 2.1 (which Lightning's converter strips)."""
    stage = 3 if request.param == "zero3" else 2
    legacy = ["--legacy-wrapper"] if request.param.endswith("legacy-wrapper") else []
    tmp = tmp_path_factory.mktemp(request.param)
    folder, reference = tmp / "last.ckpt", tmp / "reference.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    # the first DeepSpeed run on a machine JIT-builds its CPU comm op (tens of seconds)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(stage), str(folder), str(reference), *legacy], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (folder / "latest").read_text().strip() == "checkpoint"
    assert list((folder / "checkpoint").glob("*optim_states.pt")), sorted(p.name for p in folder.rglob("*"))
    ref = torch.load(reference, map_location="cpu", weights_only=True)
    assert ref["stage"] == stage
    return folder, ref


@pytest.mark.slow
def test_export_deepspeed_folder_gives_the_trained_weights(ds_checkpoint, tmp_path):
    folder, ref = ds_checkpoint
    init, trained = ref["init"], ref["trained"]
    # the reference is the trained model: every float tensor moved away from its initial value
    assert set(init) == set(trained) == set(create_model("umt_tiny").state_dict())
    unchanged = sorted(k for k, v in trained.items() if v.is_floating_point() and torch.equal(v, init[k]))
    assert not unchanged, f"the steps left {unchanged} at their initial values"

    out = export(folder, tmp_path / "w.safetensors", preset="umt_tiny")
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["preset"] == "umt_tiny" and f.metadata()["source"] == folder.name
        keys = set(f.keys())
        missing, extra = sorted(set(trained) - keys), sorted(keys - set(trained))
        assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"
        for k, v in trained.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape, (k, got.dtype, got.shape, v.dtype, v.shape)
            assert torch.equal(got, v), k

    # what evaluate.py does with --model.init_args.checkpoint=OUT (strict: a missing key would raise)
    task = RetrievalTask("umt_tiny", checkpoint=str(out))
    for k, v in trained.items():
        assert torch.equal(task.model.state_dict()[k], v), k

    # the official .pth layout, from the same folder
    pth = export(folder, tmp_path / "w.pth")
    model = create_model("umt_tiny", checkpoint=str(pth))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())


@pytest.mark.slow
def test_umt_state_from_deepspeed_folder_removes_only_the_model_prefix(ds_checkpoint):
    folder, ref = ds_checkpoint
    state = umt_state_from_checkpoint(folder)
    assert sorted(state) == sorted(ref["trained"])
    assert "temp" in state and state["temp"].shape == torch.Size([])  # the 0-d parameter survives consolidation


def test_folder_that_is_not_a_deepspeed_checkpoint(tmp_path):
    folder = tmp_path / "lightning_logs"
    (folder / "version_0").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"{folder}.*not a DeepSpeed checkpoint"):
        export(folder, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_incomplete_deepspeed_folder(tmp_path):
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    with pytest.raises(CheckpointError, match=f"{folder} is not a complete DeepSpeed checkpoint.*model_states"):
        export(folder, tmp_path / "w.safetensors")
    (folder / "latest").write_text("global_step7")
    with pytest.raises(CheckpointError, match=f"{folder} is not a complete DeepSpeed checkpoint.*global_step7"):
        export(folder, tmp_path / "w.safetensors")


def test_deepspeed_folder_without_deepspeed_installed(tmp_path, monkeypatch):
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else
                        real_find_spec(name, *a))
    with pytest.raises(CheckpointError, match=f"{folder} is a DeepSpeed checkpoint folder; .*needs deepspeed"):
        export(folder, tmp_path / "w.safetensors")
