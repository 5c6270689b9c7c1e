"""RetrievalTask trains a dual encoder (no ITM head: ViFi-CLIP) with the contrastive loss alone, its temperature from
the CLIP logit scale, and checkpoints by the ITC ranking; the synthetic retrieval data in CLIP's BPE."""
from __future__ import annotations

import math

import pytest
import torch
from retrieval_bruteforce import TinyRetrievalData, make_trainer
from torch.utils.data import DataLoader, Dataset

from vidtldr_pl.tasks import RetrievalTask
from vidtldr_pl.tasks.losses import vtc_loss

TINY = {"img_size": 64, "num_frames": 4, "context_length": 12}


class _Pairs(Dataset):
    def __init__(self, data: TinyRetrievalData) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.num_videos

    def __getitem__(self, i: int) -> dict:
        return {"video": self.data.videos[i], "video_index": i, "input_ids": self.data.input_ids[i],
                "attention_mask": self.data.attention_mask[i]}


class TinyTrainData(TinyRetrievalData):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Pairs(self), batch_size=4)


def test_dual_encoder_step_is_the_contrastive_loss_at_the_clip_temperature():
    torch.manual_seed(0)
    task = RetrievalTask("vificlip_tiny", model_overrides=TINY)
    data = TinyTrainData(num_videos=4)
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        task.model.logit_scale.fill_(2.0)
        model = task.model
        video_feat = model.vision_embed(model.encode_vision(batch["video"])[1])
        text_feat = model.text_embed(model.encode_text(batch["input_ids"], batch["attention_mask"]))
        expected = vtc_loss(video_feat, text_feat, batch["video_index"], torch.tensor(math.exp(-2.0)))
    trainer = make_trainer(max_steps=1)
    task.trainer = trainer  # training_step reads the world size and logs
    with pytest.MonkeyPatch.context() as mp:
        logged = {}
        mp.setattr(task, "log_dict", lambda values, **_: logged.update(values))
        mp.setattr(task, "log", lambda name, value, **_: logged.update({name: value}))
        loss = task.training_step(batch, 0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(logged) == {"train/loss", "train/vtc", "train/temp"}
    torch.testing.assert_close(logged["train/temp"], torch.tensor(math.exp(-2.0)))
    with torch.no_grad():
        task.model.logit_scale.fill_(7.0)  # CLIP clamps the scale at log(100)
    task.model.temperature(clamp=True)  # what training_step does before its loss
    assert task.model.logit_scale.item() == pytest.approx(math.log(100.0))


def test_dual_encoder_fit_moves_both_towers_and_the_scale_and_checkpoints_by_itc(tmp_path):
    torch.manual_seed(0)
    task = RetrievalTask("vificlip_tiny", model_overrides=TINY, lr=1e-3, warmup_epochs=0, save_best=False)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = make_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(task, datamodule=TinyTrainData(num_videos=8))
    after = task.model.state_dict()
    for name in ("logit_scale", "proj", "text.text_projection", "encoder.blocks.0.attn.qkv.weight",
                 "text.transformer.resblocks.0.attn.in_proj_weight"):
        assert not torch.equal(before[name], after[name]), name
    assert task.checkpoint_monitor == "itc/img_r1" and "{itc/img_r1:.2f}" in task.checkpoint_filename
    assert RetrievalTask("umt_tiny").checkpoint_monitor == "itm/img_r1"


def test_synthetic_retrieval_data_in_clip_bpe(tmp_path):
    from vidtldr_pl.data_modules.retrieval import SyntheticRetrievalDataModule
    from vidtldr_pl.text.clip_tokenizer import clip_tokenize

    dm = SyntheticRetrievalDataModule(cache_dir=str(tmp_path), num_train=0, num_val=0, num_test=3, clip_frames=4,
                                      clip_size=32, num_frames=2, img_size=32, tokenizer="clip", max_txt_len=20,
                                      eval_batch_size=3, num_workers=0)
    dm.setup("test")
    captions = dm.index("test").texts
    ids = dm.eval_texts("test")["input_ids"]
    assert ids.shape == (len(captions), 20) and captions[0].startswith("a ")
    assert torch.equal(ids, clip_tokenize(captions, 20))
    with pytest.raises(ValueError, match="tokenizer"):
        SyntheticRetrievalDataModule(cache_dir=str(tmp_path), tokenizer="bert")
