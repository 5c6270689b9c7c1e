"""Fine-tuning: the VTC / VTM losses, hard negatives, the LR schedule and a fit with merging active."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.tasks import RetrievalTask
from vidtldr_pl.tasks.losses import sample_hard_negatives, same_video_mask, vtc_loss, vtm_loss
from vidtldr_pl.tasks.optim import warmup_cosine


def _feats(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 8, generator=g), dim=-1), F.normalize(torch.randn(n, 8, generator=g), dim=-1)


def test_vtc_is_symmetric_cross_entropy_with_distinct_videos():
    v, t = _feats(6)
    temp = torch.tensor(0.07)
    expected = (F.cross_entropy(v @ t.t() / temp, torch.arange(6)) + F.cross_entropy(t @ v.t() / temp, torch.arange(6))) / 2
    torch.testing.assert_close(vtc_loss(v, t, torch.arange(6), temp), expected)


def test_vtc_shares_the_target_between_captions_of_one_video():
    v, t = _feats(4)
    idx = torch.tensor([0, 0, 1, 2])  # samples 0 and 1 show the same video
    temp = torch.tensor(0.1)
    sim = v @ t.t() / temp
    targets = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.]])
    i2t = -(sim.log_softmax(1) * targets).sum(1).mean()
    t2i = -((t @ v.t() / temp).log_softmax(1) * targets).sum(1).mean()
    torch.testing.assert_close(vtc_loss(v, t, idx, temp), (i2t + t2i) / 2)


def test_vtc_with_gathered_features_equals_one_big_batch():
    v, t = _feats(8)
    idx = torch.arange(8)
    temp = torch.tensor(0.05)
    # process 0 of 2 holds samples 0-3; its loss uses every text / video as candidates
    local = vtc_loss(v[:4], t[:4], idx[:4], temp, v, t, idx)
    sim_v2t, sim_t2v = v[:4] @ t.t() / temp, t[:4] @ v.t() / temp
    expected = (F.cross_entropy(sim_v2t, idx[:4]) + F.cross_entropy(sim_t2v, idx[:4])) / 2
    torch.testing.assert_close(local, expected)


def test_hard_negatives_never_pick_the_same_video_and_follow_the_similarity():
    v, t = _feats(6, seed=3)
    idx = torch.tensor([0, 0, 1, 2, 3, 4])
    same = same_video_mask(idx, idx)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        vid_for_text, txt_for_video = sample_hard_negatives(v, t, idx, torch.tensor(0.07), g)
        assert not same[torch.arange(6), vid_for_text].any()
        assert not same[torch.arange(6), txt_for_video].any()
    # a very low temperature makes the draw the most similar other video, where that one is the row's maximum
    # (as official, the softmax runs before the same-video pairs are zeroed: a dominant positive leaves ~uniform
    # 1e-4 weights)
    vid_for_text, _ = sample_hard_negatives(v, t, idx, torch.tensor(1e-4), torch.Generator().manual_seed(1))
    sim = t @ v.t()
    rows = ~same[torch.arange(6), sim.argmax(1)]
    assert rows.sum() >= 3
    assert torch.equal(vid_for_text[rows], sim.argmax(1)[rows])
    a = sample_hard_negatives(v, t, idx, torch.tensor(0.07), torch.Generator().manual_seed(5))
    b = sample_hard_negatives(v, t, idx, torch.tensor(0.07), torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_hard_negatives_need_two_videos():
    v, t = _feats(3)
    with pytest.raises(ValueError, match="two different videos"):
        sample_hard_negatives(v, t, torch.zeros(3, dtype=torch.long), torch.tensor(0.07))


def test_vtm_labels_positives_then_two_negative_blocks():
    logits = torch.tensor([[0.0, 5.0]] * 2 + [[5.0, 0.0]] * 4)
    assert vtm_loss(logits, 2) < 0.01
    assert vtm_loss(logits.flip(1), 2) > 4


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.01) == 0
    assert warmup_cosine(5, 10, 100, 0.01) == 0.5
    assert warmup_cosine(10, 10, 100, 0.01) == 1.0
    assert warmup_cosine(55, 10, 100, 0.01) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, 0.01) == 0.01


class _LrProbe(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lr_follows_warmup_and_cosine_over_the_whole_run(tmp_path):
    """The schedule learns the run's length on its first step (not when the optimizer is built, which would load
    the training data before a resumed run's progress is restored): 2 epochs x 4 batches, warm-up half an epoch."""
    task = RetrievalTask("umt_tiny", lr=1e-3, warmup_epochs=0.5, min_lr_ratio=0.01)
    probe = _LrProbe()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
                         default_root_dir=tmp_path)  # the task's own ModelCheckpoint writes last.ckpt there
    trainer.fit(task, train_dataloaders=DataLoader(_Pairs(8), batch_size=2))
    want = [1e-3 * warmup_cosine(step, 2, 8, 0.01) for step in range(8)]
    assert probe.lrs == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert probe.lrs[0] == 0 and probe.lrs[2] == pytest.approx(1e-3)


class _Pairs(Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.videos = torch.randn(n, 4, 3, 64, 64, generator=g)
        self.ids = torch.randint(5, 128, (n, 8), generator=g)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.videos[i], "video_index": i, "input_ids": self.ids[i],
                "attention_mask": torch.ones(8, dtype=torch.long)}


class _TokenProbe(pl.Callback):
    def __init__(self) -> None:
        self.tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            tokens, _ = pl_module.model.encode_vision(batch["video"][:1])
        self.tokens.append(tokens.shape[1])


def test_fit_with_vidtldr_merging_updates_every_part_of_the_model(tmp_path):
    torch.manual_seed(0)
    task = RetrievalTask("umt_tiny", lr=1e-3, warmup_epochs=0)
    before = {k: v.detach().clone() for k, v in task.named_parameters()}
    probe = _TokenProbe()
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[TokenMerging("vidtldr", r=[16, 8]), probe])
    trainer.fit(task, train_dataloaders=DataLoader(_Pairs(), batch_size=4))
    assert probe.tokens == [40, 40, 40]  # 64 -> 48 -> 40: merging active while training
    for name in ("model.vision_encoder.encoder.patch_embed.proj.weight", "model.vision_encoder.encoder.blocks.3.mlp.fc2.weight",
                 "model.text_encoder.encoder.layer.3.crossattention.self.key.weight", "model.itm_head.weight",
                 "model.vision_proj.weight", "model.text_proj.weight", "model.temp"):
        assert not torch.equal(before[name], dict(task.named_parameters())[name]), name
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"]) and logged["train/vtm"] > 0 and logged["train/vtc"] > 0


def test_gradient_checkpointing_with_merging_gives_the_same_gradients():
    from vidtldr_pl.backbones import create_model
    from vidtldr_pl.merging import patch

    torch.manual_seed(0)
    model = create_model("umt_tiny").train()
    patch(model.vision_encoder, "vidtldr", r=[16, 8])
    video = torch.randn(2, 4, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.vision_encoder.encoder.set_grad_checkpointing(enable)
        tokens, pooled = model.encode_vision(video)
        assert tokens.shape[1] == 40
        (tokens.pow(2).mean() + pooled.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=0, atol=1e-6, msg=k)


def test_temp_is_zero_d_in_state_dicts_and_old_optimizer_states_resume():
    """UMT.temp is a (1,) parameter (DeepSpeed cannot broadcast 0-d ones) but 0-d in every state dict (official
    layout); AdamW moments saved while it was 0-d are reshaped when a training checkpoint is loaded."""
    task = RetrievalTask("umt_tiny")
    assert task.model.temp.shape == (1,) and task.model.state_dict()["temp"].shape == ()
    task.model.load_state_dict({**task.model.state_dict(), "temp": torch.tensor(0.05)})
    assert task.model.temp.item() == pytest.approx(0.05)
    decay, no_decay = task._param_groups()
    params = [p for _, p in decay + no_decay]
    position = [n for n, _ in decay + no_decay].index("model.temp")
    optimizer = torch.optim.AdamW([{"params": params}])
    saved = optimizer.state_dict()
    saved["state"] = {position: {"step": torch.tensor(3.0), "exp_avg": torch.tensor(0.1), "exp_avg_sq": torch.tensor(0.2)}}
    checkpoint = {"optimizer_states": [saved]}
    task.on_load_checkpoint(checkpoint)
    state = checkpoint["optimizer_states"][0]["state"][position]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (1,) and state["step"].shape == ()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    task.model.temp.grad = torch.ones(1)
    optimizer.step()  # 0-d moments with a (1,) gradient would raise here
    assert optimizer.state[task.model.temp]["exp_avg"].shape == (1,)
