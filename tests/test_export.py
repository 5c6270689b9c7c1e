"""vidtldr_pl.export: a training checkpoint -> one weights file in the official layout that create_model loads."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from safetensors import safe_open

from vidtldr_pl.backbones import create_model
from vidtldr_pl.errors import CheckpointError
from vidtldr_pl.export import export, main
from vidtldr_pl.tasks import RetrievalTask


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    task = RetrievalTask("umt_tiny")
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(task)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, task


@pytest.mark.parametrize("suffix,dtype", [(".safetensors", None), (".safetensors", "float16"), (".pth", None)])
def test_export_roundtrip(lightning_ckpt, tmp_path, suffix, dtype):
    path, task = lightning_ckpt
    out = export(path, tmp_path / f"w{suffix}", dtype=dtype, preset="umt_tiny")
    model = create_model("umt_tiny", checkpoint=str(out))
    for k, v in task.model.state_dict().items():
        expected = v.to(torch.float16).float() if dtype and v.is_floating_point() else v
        assert torch.equal(model.state_dict()[k], expected), k
    if suffix == ".safetensors":
        with safe_open(str(out), "pt") as f:
            assert f.metadata()["preset"] == "umt_tiny"
            assert "model.temp" not in f.keys() and "temp" in f.keys()


def test_export_cli_and_bad_input(lightning_ckpt, tmp_path, capsys):
    path, _ = lightning_ckpt
    main([str(path), str(tmp_path / "w.safetensors"), "--dtype", "bfloat16"])
    assert "w.safetensors" in capsys.readouterr().out
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="no vision_encoder"):
        export(other, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        export(tmp_path / "missing.ckpt", tmp_path / "x.safetensors")
