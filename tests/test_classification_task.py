"""ClassificationTask: multi-view evaluation equal to a brute-force per-view loop (with and without merging), 1 vs 2
processes, missing videos, fine-tuning with merging (loss decreases; exact resume), Mixup / CutMix, layer-wise lr
decay and the lr schedule."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from classification_data import (
    NUM_CLASSES,
    bruteforce_scores,
    make_datamodule,
    make_task,
    make_trainer,
    one_thread,
    save_tiny_model,
    write_list,
    write_videos,
)

from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.merging import find_mergeable, patch, unpatch
from vidtldr_pl.tasks.classification import topk_accuracy, video_scores
from vidtldr_pl.tasks.mixup import apply_mix, draw_mix, mix_targets, soft_target_cross_entropy
from vidtldr_pl.tasks.optim import layer_decay_groups, warmup_cosine_floor

HERE = Path(__file__).resolve().parent
LABELS = [0, 1, 2, 3, 5, 6, 7]  # 7 videos x 15 views = 105 items: two processes need one padding repeat


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    names = write_videos(root / "videos", LABELS)
    write_list(root / "test.txt", names, LABELS)
    save_tiny_model(root / "tiny.safetensors")
    return root


def _test(data: Path, callbacks=None, **dm_kw):
    task, dm = make_task(data / "tiny.safetensors"), make_datamodule(data / "videos", data / "test.txt", **dm_kw)
    make_trainer(callbacks).test(task, datamodule=dm, verbose=False)
    return task, dm


def _expected_topk(scores: torch.Tensor, labels: list[int]) -> tuple[float, float]:
    """top-1 / top-5 in % by hand: argmax, and the label among the 5 largest scores."""
    y = torch.tensor(labels)
    top1 = (scores.argmax(1) == y).double().mean().item() * 100
    top5 = (scores.topk(5, dim=1).indices == y[:, None]).any(1).double().mean().item() * 100
    return top1, top5


def test_multiview_evaluation_equals_bruteforce(data):
    task, dm = _test(data)
    bf = bruteforce_scores(task.model, dm)
    assert task.results["num_videos"] == 7 and task.results["num_views"] == 15
    np.testing.assert_allclose(task.scores.numpy(), bf.numpy(), rtol=0, atol=1e-6)
    assert task.labels.tolist() == LABELS and task.video_ids.tolist() == list(range(7))
    top1, top5 = _expected_topk(bf, LABELS)
    assert task.results["top1"] == pytest.approx(top1) and task.results["top5"] == pytest.approx(top5)
    assert 0 < task.results["top5"] < 100  # 8 classes: top-5 is not trivially 100
    assert task.results["tokens_per_layer"] == [32, 32, 32, 32] and task.results["gflops"] > 0
    # the mean over views is not the score of any single view
    single = bruteforce_scores(task.model, make_datamodule(data / "videos", data / "test.txt", test_clips=1,
                                                           test_crops=1))
    assert (single - bf).abs().max() > 1e-4


def test_multiview_with_token_merging_equals_bruteforce(data):
    task, dm = _test(data, [TokenMerging("vidtldr", r=[8, 4])])
    assert task.results["tokens_per_layer"] == [24, 20, 20, 20]
    patch(task.model, "vidtldr", r=[8, 4])
    try:
        bf = bruteforce_scores(task.model, dm)
    finally:
        unpatch(task.model)
    np.testing.assert_allclose(task.scores.numpy(), bf.numpy(), rtol=0, atol=1e-6)
    plain, _ = _test(data)
    assert (plain.scores - task.scores).abs().max() > 1e-5  # merging changed the predictions


def test_batch_size_and_validate_stage(data):
    a, _ = _test(data, eval_batch_size=1)
    b, _ = _test(data, eval_batch_size=7)
    np.testing.assert_allclose(a.scores.numpy(), b.scores.numpy(), rtol=0, atol=1e-6)
    assert a.results["top1"] == b.results["top1"] and a.results["top5"] == b.results["top5"]
    task, dm = make_task(data / "tiny.safetensors"), make_datamodule(data / "videos", data / "test.txt")
    make_trainer().validate(task, datamodule=dm, verbose=False)  # single view: the middle clip, centre crop
    assert task.results["num_views"] == 1 and task.results["num_videos"] == 7
    np.testing.assert_allclose(task.scores.numpy(), bruteforce_scores(task.model, dm, "validate").numpy(), atol=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one_process(data, tmp_path):
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, str(HERE / "ddp_classification_script.py"), str(out), str(data),
                           str(data / "tiny.safetensors"), "--merge"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2 and ddp["seen_per_rank"] == [53, 53]  # 105 views: the sampler repeated one
    single, _ = _test(data, [TokenMerging("vidtldr", r=[8, 4])])
    np.testing.assert_allclose(np.asarray(ddp["scores"]), single.scores.numpy(), rtol=0, atol=1e-6)
    for key in ("top1", "top5", "num_videos", "num_views", "tokens_per_layer"):
        assert ddp["results"][key] == single.results[key], key


def test_every_view_is_needed_unless_videos_are_skipped(data, tmp_path):
    with pytest.raises(ValueError, match="of its 15 views|of 7 videos"):
        task, dm = make_task(data / "tiny.safetensors"), make_datamodule(data / "videos", data / "test.txt")
        make_trainer(limit_test_batches=2).test(task, datamodule=dm, verbose=False)
    # an unreadable video: an error naming it, or (skip_errors) the others scored and the skip counted
    videos = tmp_path / "videos"
    names = write_videos(videos, LABELS[:4])
    (videos / names[1]).write_bytes(b"not a video at all")
    write_list(tmp_path / "test.txt", names, LABELS[:4])
    task, dm = make_task(data / "tiny.safetensors"), make_datamodule(videos, tmp_path / "test.txt", skip_errors=True)
    make_trainer().test(task, datamodule=dm, verbose=False)
    assert task.results["num_videos"] == 3 and task.results["num_skipped"] == 1
    assert task.video_ids.tolist() == [0, 2, 3]
    with pytest.raises(Exception, match="clip_01.mp4"):
        make_trainer().test(make_task(data / "tiny.safetensors"), verbose=False,
                            datamodule=make_datamodule(videos, tmp_path / "test.txt"))


def test_class_count_mismatch_is_one_clear_error(data):
    dm = make_datamodule(data / "videos", data / "test.txt", num_classes=9)
    task = make_task(data / "tiny.safetensors")
    with pytest.raises(ValueError, match="outputs 8 classes, the data has 9"):
        make_trainer().test(task, datamodule=dm, verbose=False)


def test_video_scores_and_topk():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    key = torch.tensor([0, 1, 2, 3])  # 2 videos x 2 views
    videos, scores, labels = video_scores(key, probs, torch.tensor([0, 0, 2, 2]), 2)
    assert videos.tolist() == [0, 1] and labels.tolist() == [0, 2]
    torch.testing.assert_close(scores, torch.tensor([[0.4, 0.35, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64))
    assert topk_accuracy(scores, labels, 1) == 100.0 and topk_accuracy(scores, torch.tensor([1, 0]), 2) == 50.0
    with pytest.raises(ValueError, match="1 of its 2 views"):
        video_scores(torch.tensor([0, 1, 2]), probs[:3], torch.tensor([0, 0, 2]), 2)
    with pytest.raises(ValueError, match="different labels"):
        video_scores(key, probs, torch.tensor([0, 1, 2, 2]), 2)


# ---------------------------------------------------------------------------------------------- fine-tuning
class Record(pl.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.tokens: set[int] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """A separable problem: 16 clips, 4 classes told apart by their colour."""
    root = tmp_path_factory.mktemp("cls_train")
    labels = [i % 4 for i in range(16)]
    names = write_videos(root / "videos", labels, seed=1)
    write_list(root / "train.txt", names, labels)
    write_list(root / "val.txt", names[:8], labels[:8])
    return root


def _fit_dm(root: Path):
    return make_datamodule(root / "videos", root / "val.txt", root / "train.txt", val_views="single")


def test_fit_with_merging_decreases_the_loss(train_data):
    torch.manual_seed(0)
    task = make_task(lr=2e-3, warmup_epochs=0.5, layer_decay=0.75, label_smoothing=0.1, save_best=False)
    record = Record()
    encoder = find_mergeable(task.model)[0]
    handle = encoder.register_forward_hook(lambda m, a, out: record.tokens.add(out.shape[1]) if m.training else None)
    make_trainer([TokenMerging("vidtldr", r=[8, 4]), record], max_epochs=4).fit(task, datamodule=_fit_dm(train_data))
    handle.remove()
    assert record.tokens == {20}  # trained on merged tokens
    steps = sorted(record.losses)
    assert len(steps) == 16
    first, last = np.mean([record.losses[s] for s in steps[:4]]), np.mean([record.losses[s] for s in steps[-4:]])
    assert last < 0.75 * first, (first, last)  # measured: 1.82 -> 1.03
    assert task.results["top1"] >= 50.0  # validation (8 clips, single view; chance 25 %): measured 100


def test_resume_continues_exactly(train_data, tmp_path):
    """Stopped after step 3 (mid-epoch) and resumed from its last.ckpt: steps 4-8 train on the same samples with the
    same dropout / drop-path / mixup draws and lr as an uninterrupted run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    opts = {"lr": 1e-3, "warmup_epochs": 1, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "save_best": False,
            "model_overrides": {"num_classes": NUM_CLASSES, "drop_path_rate": 0.2, "fc_drop": 0.3}}

    def run(*callbacks, ckpt=None):
        torch.manual_seed(0)
        task = make_task(**opts)
        record = Record()
        make_trainer([TokenMerging("vidtldr", r=[8, 4]), record, *callbacks], max_epochs=2,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     num_sanity_val_steps=0).fit(task, datamodule=_fit_dm(train_data), ckpt_path=ckpt)
        return record.losses

    full = run()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    stopped = run(saver, StopAt(3))
    assert max(stopped) == 3
    resumed = run(ckpt=str(tmp_path / "last.ckpt"))
    assert sorted(resumed) == list(range(4, 9)) and sorted(full) == list(range(1, 9))
    for step in range(4, 9):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), step
    assert len({round(v, 4) for v in full.values()}) == 8


# ---------------------------------------------------------------------------------------------- pieces
def test_mixup_cutmix_draws_and_targets():
    rng = np.random.default_rng(0)
    assert draw_mix(8, 8, 0.0, 0.0, 1.0, 0.5, rng).lam == 1.0
    video = torch.arange(4 * 2 * 3 * 8 * 8, dtype=torch.float32).view(4, 2, 3, 8, 8)
    label = torch.tensor([0, 1, 2, 3])
    mixed = [draw_mix(8, 8, 0.8, 0.0, 1.0, 0.5, np.random.default_rng(s)) for s in range(5)]
    assert all(d.box is None and 0 < d.lam < 1 for d in mixed)
    d = mixed[0]
    torch.testing.assert_close(apply_mix(video, d), d.lam * video + (1 - d.lam) * video.flip(0))
    cut = draw_mix(8, 8, 0.0, 1.0, 1.0, 0.5, np.random.default_rng(3))
    y0, y1, x0, x1 = cut.box
    assert cut.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 64)
    out = apply_mix(video, cut)
    assert torch.equal(out[..., y0:y1, x0:x1], video.flip(0)[..., y0:y1, x0:x1])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out[..., outside], video[..., outside])
    target = mix_targets(label, 5, 0.7, 0.1)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    assert target[0, 0] == pytest.approx(0.7 * 0.92 + 0.3 * 0.02) and target[0, 3] == pytest.approx(0.7 * 0.02 + 0.3 * 0.92)
    logits = torch.randn(4, 5)
    torch.testing.assert_close(soft_target_cross_entropy(logits, mix_targets(label, 5, 1.0, 0.1)),
                               F.cross_entropy(logits, label, label_smoothing=0.1))


def test_layer_decay_groups_follow_videomae():
    task = make_task(layer_decay=0.5)
    groups = layer_decay_groups(task, find_mergeable(task.model)[0], 0.05, 0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    depth = 4
    assert by_name["model.encoder.patch_embed.proj.weight"]["lr_scale"] == 0.5 ** (depth + 1)
    assert by_name["model.encoder.blocks.0.attn.qkv.weight"]["lr_scale"] == 0.5 ** depth
    assert by_name["model.encoder.blocks.3.mlp.fc2.weight"]["lr_scale"] == 0.5
    assert by_name["model.head.weight"]["lr_scale"] == 1.0 and by_name["model.fc_norm.weight"]["lr_scale"] == 1.0
    assert by_name["model.head.weight"]["weight_decay"] == 0.05
    for name in ("model.head.bias", "model.fc_norm.weight", "model.encoder.blocks.0.attn.q_bias",
                 "model.encoder.blocks.2.norm1.weight"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert sum(len(g["params"]) for g in groups) == len(list(task.parameters()))
    optimizer = task.configure_optimizers()["optimizer"]
    assert [g["initial_lr"] / g["lr_scale"] for g in optimizer.param_groups] == pytest.approx([task.hparams.lr] * len(groups))


def test_schedule_is_videomae_cosine():
    base, final, warmup, total = 1.0, 0.01, 5, 40
    # utils.cosine_scheduler of VideoMAE, transcribed
    ref = np.concatenate([np.linspace(0, base, warmup), [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / (total - warmup)))
                                                        for i in range(total - warmup)]])
    ours = [warmup_cosine_floor(s, warmup, total, final / base) for s in range(total)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
