"""The TokenMerging callback patches the wrapped backbone at setup, from Python or from YAML."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader, TensorDataset

from vidtldr_pl.backbones import create_model
from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.merging import ScheduleError


class VideoProbe(pl.LightningModule):
    """Wraps a UMT vision encoder; records tokens per block in validation and trains a tiny head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_model("umt_tiny").vision_encoder
        self.head = torch.nn.Linear(64, 2)
        self.seen: list[list[int]] = []

    def validation_step(self, batch, _):
        _, pooled, state = self.backbone(batch[0], return_state=True)
        self.seen.append(state.tokens_per_layer)

    def training_step(self, batch, _):
        _, pooled, state = self.backbone(batch[0], return_state=True)
        self.seen.append(state.tokens_per_layer)
        return torch.nn.functional.cross_entropy(self.head(pooled), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    video = torch.randn(4, 3, 4, 64, 64)
    return DataLoader(TensorDataset(video, torch.tensor([0, 1, 0, 1])), batch_size=2)


def _trainer(callback, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def test_validate_with_merging_then_unpatched():
    module = VideoProbe()
    _trainer(TokenMerging("vidtldr", r=[16, 8], target="backbone")).validate(module, _loader(), verbose=False)
    assert module.seen == [[48, 40, 40, 40]] * 2
    assert all(b.merge is None for b in module.backbone.encoder.blocks)  # removed at teardown


def test_fit_with_merging_updates_weights():
    module = VideoProbe()
    before = module.backbone.encoder.blocks[0].attn.qkv.weight.detach().clone()
    _trainer(TokenMerging("tome", r=0.25, layers=[0]), max_steps=2).fit(module, _loader())
    assert module.seen[0] == [48, 48, 48, 48]
    assert not torch.equal(before, module.backbone.encoder.blocks[0].attn.qkv.weight)


def test_callback_from_yaml():
    text = """
callbacks:
  - class_path: vidtldr_pl.callbacks.TokenMerging
    init_args:
      method: vidtldr
      r: [600, 200, 100]
      attention: explicit
"""
    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[pl.Callback])
    cfg = parser.parse_object(yaml.safe_load(text))
    callback = parser.instantiate(cfg).callbacks[0]
    assert isinstance(callback, TokenMerging) and callback.setting.r == [600, 200, 100]
    assert callback.setting.attention == "explicit"


def test_bad_config_fails_early():
    with pytest.raises(ValueError, match="unknown merge method"):
        TokenMerging("tomato", r=[1])
    module = VideoProbe()
    with pytest.raises(ScheduleError, match="only 4 blocks"):
        _trainer(TokenMerging("vidtldr", r=[1, 1, 1, 1, 1])).validate(module, _loader(), verbose=False)
    with pytest.raises(AttributeError, match="no 'encoder_x'"):
        _trainer(TokenMerging("vidtldr", r=[1], target="backbone.encoder_x")).validate(module, _loader(), verbose=False)
