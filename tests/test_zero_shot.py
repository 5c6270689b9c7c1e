"""Zero-shot classification: per split and the mean over 3 splits equal a brute-force loop (one view, one prompt
at a time); 1 vs 2 processes identical; prompts encoded once per class list."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from classification_data import one_thread
from zero_shot_data import CLASS_NAMES, SPLITS, bruteforce, datamodule, make_trainer, save_model, task, write_splits

from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.tasks.classification import topk_accuracy
from vidtldr_pl.tasks.zero_shot import ZeroShotClassificationTask, evaluate_splits

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_splits(tmp_path_factory.mktemp("zs"))
    save_model(root / "tiny.safetensors")
    return root


def test_three_splits_equal_bruteforce(data):
    t = task(data / "tiny.safetensors")
    calls = []
    original = t.model.set_class_names
    t.model.set_class_names = lambda *a, **k: calls.append(1) or original(*a, **k)
    dms = {s: datamodule(data, s) for s in SPLITS}
    scores = {}

    def trainer():
        return make_trainer()

    out = {"splits": {}}
    for name, dm in dms.items():  # per split, keeping each split's scores for the comparison
        out["splits"][name] = evaluate_splits(t, {name: dm}, trainer)["splits"][name]
        scores[name] = t.scores.clone()
    summary = evaluate_splits(t, dms, trainer)
    assert len(calls) == 1  # the same class list: prompts encoded once
    top1 = []
    for name, dm in dms.items():
        ref, labels = bruteforce(data / "tiny.safetensors", dm)
        # float32 logits at scale exp(logit_scale) = 100, batched vs one by one: ~1e-5 apart
        np.testing.assert_allclose(scores[name].numpy(), ref.numpy(), rtol=0, atol=2e-5)
        expected = (topk_accuracy(ref, labels, 1), topk_accuracy(ref, labels, 5))
        got = summary["splits"][name]
        assert (got["top1"], got["top5"]) == pytest.approx(expected, abs=1e-9)
        assert got["num_videos"] == len(SPLITS[name]) and got["num_views"] == 1
        top1.append(expected[0])
    # the view is the segment middles: int(tick / 2 + tick * i) of each video's frames
    frames = datamodule(data, "split1").protocol.frames(20, "val")
    assert frames == [int(5 / 2 + 5 * i) for i in range(4)]
    assert summary["num_splits"] == 3 and summary["top1"] == pytest.approx(sum(top1) / 3, abs=1e-9)


def test_two_processes_equal_one_process(data, tmp_path):
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, str(HERE / "ddp_zero_shot_script.py"), str(out), str(data),
                           str(data / "tiny.safetensors")], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    t = task(data / "tiny.safetensors")
    for split in SPLITS:
        make_trainer([TokenMerging("vidtldr", r=[4, 2])]).validate(t, datamodule=datamodule(data, split), verbose=False)
        np.testing.assert_allclose(np.asarray(ddp["scores"][split]), t.scores.numpy(), rtol=0, atol=1e-6)
        for key in ("top1", "top5", "num_videos", "num_views", "tokens_per_layer"):
            assert ddp["results"][split][key] == t.results[key], (split, key)
        assert t.results["tokens_per_layer"] == [13, 11, 11]  # per frame: 17 -> 13 -> 11 (r = [4, 2]), CLS kept


def test_class_names_required_and_template_checked(data):
    with pytest.raises(ValueError, match="prompt_template"):
        ZeroShotClassificationTask(model="vificlip_tiny", prompt_template="no slot")
    with pytest.raises(ValueError, match="dual encoder"):
        ZeroShotClassificationTask(model="videomae_tiny")
    t = ZeroShotClassificationTask(model="vificlip_tiny", class_names=CLASS_NAMES[:3])
    assert t.class_names() == CLASS_NAMES[:3]
    assert torch.equal(t.model.set_class_names(CLASS_NAMES[:3]), t.model.class_features)


def test_class_names_from_a_file(tmp_path):
    from vidtldr_pl.tasks.zero_shot import read_class_name_file

    (tmp_path / "labels.csv").write_text("id,name\n0,apply eye makeup\n1,Apply_Lipstick\n")
    (tmp_path / "names.txt").write_text("a\n\nb c\n")
    assert read_class_name_file(str(tmp_path / "labels.csv")) == ["apply eye makeup", "Apply_Lipstick"]
    assert read_class_name_file(str(tmp_path / "names.txt")) == ["a", "b c"]
    t = ZeroShotClassificationTask(model="vificlip_tiny", class_names=str(tmp_path / "labels.csv"))
    assert t.class_names() == ["apply eye makeup", "Apply_Lipstick"]
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        ZeroShotClassificationTask(model="vificlip_tiny", class_names=str(tmp_path / "missing.csv"))


@pytest.mark.slow
def test_evaluate_py_zero_shot_compare_rows(data, tmp_path):
    """python evaluate.py with a zero-shot config: compare rows (none / ToMe / vid-TLDR with the CLS in or out of
    the saliency) give per-frame token counts and the unmerged row equals the in-process evaluation."""
    config = tmp_path / "zs.yaml"
    names = ", ".join(CLASS_NAMES)
    config.write_text(f"""
model:
  class_path: vidtldr_pl.tasks.zero_shot.ZeroShotClassificationTask
  init_args: {{model: vificlip_tiny, checkpoint: {data}/tiny.safetensors, model_overrides: {{num_frames: 4}}}}
data:
  class_path: vidtldr_pl.data_modules.classification.VideoClassificationDataModule
  init_args:
    val: {data}/split1.txt
    video_root: {data}/videos
    class_names: [{names}]
    protocol: segment
    num_frames: 4
    val_views: single
    test_clips: 1
    test_crops: 1
    img_size: 32
    eval_batch_size: 3
    num_workers: 0
split: validate
trainer: {{accelerator: cpu, devices: 1, logger: false, enable_progress_bar: false}}
compare:
  - {{name: none, method: none}}
  - {{name: ToMe, method: tome, r: [4, 2]}}
  - {{name: vid-TLDR, method: vidtldr, r: [4, 2]}}
  - {{name: vid-TLDR CLS out, method: vidtldr, r: [4, 2], method_options: {{prefix_in_saliency: false}}}}
""")
    proc = subprocess.run([sys.executable, str(HERE.parent / "evaluate.py"), "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(next((tmp_path / "outputs").glob("results_*.json")).read_text())["runs"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["none"]["tokens_per_layer"] == [17, 17, 17]
    for name in ("ToMe", "vid-TLDR", "vid-TLDR CLS out"):
        assert by_name[name]["tokens_per_layer"] == [13, 11, 11], name
    t = task(data / "tiny.safetensors")
    make_trainer().validate(t, datamodule=datamodule(data, "split1"), verbose=False)
    assert by_name["none"]["top1"] == pytest.approx(t.results["top1"])
