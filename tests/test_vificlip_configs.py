"""The ViFi-CLIP configs validate against the classes' signatures and carry the protocols they document."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml
from jsonargparse import ArgumentParser

ROOT = Path(__file__).resolve().parents[1]
R16 = [16] * 11
NAMES = ("ucf101_zs_vificlip", "hmdb51_zs_vificlip", "k600_zs_vificlip", "k400_vificlip", "msrvtt_vificlip")


@pytest.mark.parametrize("name", NAMES)
def test_config_parses_and_carries_its_protocol(name):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=pl.LightningModule)
    parser.add_argument("--data", type=pl.LightningDataModule)
    parser.add_argument("--split", type=str, default="test")
    parser.add_class_arguments(pl.Trainer, "trainer")
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    cfg = parser.parse_object(yaml.safe_load(text))
    assert cfg.model.init_args.model == "vificlip_b16"
    merge = next(cb for cb in cfg.trainer.callbacks if cb.class_path.endswith("TokenMerging"))
    assert merge.init_args.method == "vidtldr" and merge.init_args.r == R16
    assert "python -m vidtldr_pl.flops.report --model vificlip_b16" in text
    data = cfg.data.init_args
    if "_zs_" in name:  # ViFi-CLIP's zero-shot view: 32 TSN segment middles, one view, the validate stage
        assert cfg.model.class_path == "vidtldr_pl.tasks.zero_shot.ZeroShotClassificationTask"
        assert (data.protocol, data.num_frames, data.val_views, cfg.split) == ("segment", 32, "single", "validate")
    elif name == "k400_vificlip":  # 4 clips x 3 crops at fixed offsets, documented as such
        assert (data.num_frames, data.test_clips, data.test_crops) == (16, 4, 3)
        assert "FIXED" in text and "RANDOM" in text
    else:
        assert cfg.model.class_path == "vidtldr_pl.tasks.RetrievalTask" and data.tokenizer == "clip"
