"""``python evaluate.py`` on a YAML that names a transformers ``save_pretrained`` directory (``model: hf:<dir>``): a
random VideoMAE classifier (small config, written here) on a few generated action clips, with a ``compare`` block
(no merging / ToMe / vid-TLDR): the usual table, with GFLOPs and tokens per layer measured on the grafted encoder; a
missing directory is one line and exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_demo import printed_table  # noqa: E402

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE, PATCH, TUBELET, DEPTH = 4, 32, 8, 2, 3
TOKENS = (FRAMES // TUBELET) * (SIZE // PATCH) ** 2  # 32
R = [4, 4, 2]


def _save_videomae(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.VideoMAEConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=TUBELET,
                                      hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=2,
                                      intermediate_size=64, num_labels=12)
    transformers.VideoMAEForVideoClassification(cfg).save_pretrained(folder)
    return folder


def _config(tmp_path: Path, model: str) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "vidtldr_pl.tasks.ClassificationTask", "init_args": {"model": model}},
        "data": {"class_path": "vidtldr_pl.data_modules.synthetic_actions.SyntheticActionDataModule",
                 "init_args": {"cache_dir": str(tmp_path / "synthetic"), "seed": 0, "num_train": 0, "num_val": 0,
                               "num_test": 12, "clip_frames": FRAMES, "clip_size": SIZE, "num_frames": FRAMES,
                               "img_size": SIZE, "eval_batch_size": 6, "num_workers": 0}},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "logger": False},
        "compare": [{"name": "no merging", "method": "none"},
                    {"name": "ToMe", "method": "tome", "r": R},
                    {"name": "vid-TLDR", "method": "vidtldr", "r": R}],
    }
    path = tmp_path / "hf_videomae.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _evaluate(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", "--config", str(config), *extra], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)


def test_evaluate_compares_merging_on_a_saved_transformers_classifier(tmp_path):
    folder = _save_videomae(tmp_path / "videomae")
    out = tmp_path / "results.json"
    proc = _evaluate(_config(tmp_path, f"hf:{folder}"), f"--results={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["name"] for r in runs] == ["no merging", "ToMe", "vid-TLDR"]
    plain, tome, vidtldr = runs
    assert all(r["num_videos"] == 12 and 0.0 <= r["top1"] <= 100.0 for r in runs)
    assert plain["tokens_per_layer"] == [TOKENS] * DEPTH
    expected = [TOKENS - 4, TOKENS - 8, TOKENS - 10]
    assert tome["tokens_per_layer"] == vidtldr["tokens_per_layer"] == expected
    assert plain["gflops"] > tome["gflops"] > 0 and plain["gflops"] > vidtldr["gflops"] > 0
    assert vidtldr["merge_gmacs"] > 0 and plain["merge_gmacs"] == 0
    assert all(r["videos_per_s"] and r["videos_per_s"] > 0 for r in runs)  # two batches: the second is timed
    table = printed_table(proc.stdout)
    assert {"no merging", "ToMe", "vid-TLDR"} <= set(table)
    assert any("32x3" in cell for cell in table["no merging"]), table["no merging"]  # tokens per layer column
    assert any("28 24 22" in cell for cell in table["vid-TLDR"]), table["vid-TLDR"]


def test_the_table_gflops_are_the_encoders_own_count(tmp_path):
    """``call_flops`` (what EncoderStats reports for a grafted encoder: its first call replayed on the meta device)
    equals a count of one real forward of the encoder, per video."""
    from torch.utils.flop_counter import FlopCounterMode

    from vidtldr_pl.backbones import create_model
    from vidtldr_pl.flops import call_flops, meta_call
    from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable

    model = create_model(f"hf:{_save_videomae(tmp_path / 'videomae')}").eval()
    apply_merge(model, MergeSetting(method="vidtldr", r=R))
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    encoder = find_mergeable(model)[0]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(video.transpose(1, 2))
    report = call_flops(encoder, *meta_call((video.transpose(1, 2),), {}), per=2)
    assert report.flops == counter.get_total_flops() // 2
    assert report.tokens_per_layer == [TOKENS - 4, TOKENS - 8, TOKENS - 10]


def test_flops_of_the_grafted_encoder_equal_our_presets(tmp_path):
    """The transformers VideoMAE of videomae_demo's size and our videomae_demo count the same FLOPs and merge FLOPs
    per video, with and without merging (both on the meta device)."""
    from vidtldr_pl.backbones import create_model
    from vidtldr_pl.flops import call_flops, encoder_flops, meta_call
    from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable

    cfg = transformers.VideoMAEConfig(image_size=96, num_frames=8, num_labels=12, hidden_size=192,
                                      num_hidden_layers=6, num_attention_heads=3, intermediate_size=768)
    transformers.VideoMAEForVideoClassification(cfg).save_pretrained(tmp_path / "demo_size")
    theirs, ours = create_model(f"hf:{tmp_path / 'demo_size'}"), create_model("videomae_demo")
    call = meta_call((torch.zeros(1, 8, 3, 96, 96),), {})
    for setting in (MergeSetting(method="none"), MergeSetting(method="vidtldr", r=[48, 24, 12]),
                    MergeSetting(method="tome", r=[48, 24, 12])):
        apply_merge(theirs, setting), apply_merge(ours, setting)
        a, b = call_flops(find_mergeable(theirs)[0], *call), encoder_flops(find_mergeable(ours)[0])
        assert (a.flops, a.merge_flops) == (b.flops, b.merge_flops), setting.method
        if setting.method != "none":
            assert a.tokens_per_layer == b.tokens_per_layer == [96, 72, 60, 60, 60, 60]


def test_a_missing_directory_is_one_line_and_exit_2(tmp_path):
    proc = _evaluate(_config(tmp_path, f"hf:{tmp_path / 'nowhere'}"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no such directory" in errors[0] and "nowhere" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ a dual encoder
OPEN_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": SIZE, "patch_size": PATCH, "width": 32, "layers": DEPTH,
                                             "head_width": 16, "mlp_ratio": 2.0},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
FRAME_TOKENS = 1 + (SIZE // PATCH) ** 2  # 17 per frame, the CLS protected


def test_evaluate_zero_shot_with_an_open_clip_model(tmp_path):
    """``model: open_clip:ViT-B-16`` (small config through model_overrides) as a zero-shot classifier from YAML:
    merging per frame, tokens per layer per frame, GFLOPs per view (its frames together)."""
    pytest.importorskip("open_clip")
    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "vidtldr_pl.tasks.zero_shot.ZeroShotClassificationTask",
                  "init_args": {"model": "open_clip:ViT-B-16", "model_overrides": OPEN_CLIP,
                                "prompt_template": "a {}"}},
        "data": {"class_path": "vidtldr_pl.data_modules.synthetic_objects.SyntheticObjectDataModule",
                 "init_args": {"cache_dir": str(tmp_path / "synthetic"), "seed": 0, "num_test": 8, "clip_frames": 4,
                               "clip_size": SIZE, "num_frames": 2, "img_size": SIZE, "eval_batch_size": 4,
                               "num_workers": 0}},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "logger": False},
        "compare": [{"name": "no merging", "method": "none"},
                    {"name": "vid-TLDR", "method": "vidtldr", "r": [2, 2, 1]}],
    }
    config, out = tmp_path / "open_clip_zs.yaml", tmp_path / "results.json"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _evaluate(config, f"--results={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain, merged = json.loads(out.read_text())["runs"]
    assert plain["num_videos"] == merged["num_videos"] == 8
    assert plain["tokens_per_layer"] == [FRAME_TOKENS] * DEPTH
    assert merged["tokens_per_layer"] == [FRAME_TOKENS - 2, FRAME_TOKENS - 4, FRAME_TOKENS - 5]
    assert plain["gflops"] > merged["gflops"] > 0
    assert {"no merging", "vid-TLDR"} <= set(printed_table(proc.stdout))


def test_retrieval_ranks_with_an_open_clip_dual_encoder(tmp_path):
    """RetrievalTask on ``open_clip:`` (a DualEncoder: ITC ranking, the itc/ metrics), merging through the
    TokenMerging callback, EncoderStats per video (2 frames each)."""
    pytest.importorskip("open_clip")
    import lightning.pytorch as pl

    from vidtldr_pl.callbacks.vidtldr import TokenMerging
    from vidtldr_pl.data_modules.retrieval import SyntheticRetrievalDataModule
    from vidtldr_pl.flops import call_flops, meta_call
    from vidtldr_pl.merging import MergeSetting, apply_merge, find_mergeable
    from vidtldr_pl.tasks import RetrievalTask

    torch.manual_seed(0)
    task = RetrievalTask("open_clip:ViT-B-16", model_overrides=OPEN_CLIP)
    dm = SyntheticRetrievalDataModule(cache_dir=str(tmp_path), num_train=0, num_val=0, num_test=4, clip_frames=4,
                                      clip_size=SIZE, num_frames=2, img_size=SIZE, tokenizer="clip", max_txt_len=20,
                                      eval_batch_size=2, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[TokenMerging(method="tome", r=[2, 2, 1])])
    trainer.test(task, datamodule=dm, verbose=False)
    results = task.results
    assert results["num_videos"] == 4 and "itc/txt_r1" in results and not any(k.startswith("itm/") for k in results)
    assert results["tokens_per_layer"] == [FRAME_TOKENS - 2, FRAME_TOKENS - 4, FRAME_TOKENS - 5]
    assert not find_mergeable(task.model), "TokenMerging's teardown gives the model back unpatched"
    apply_merge(task.model, MergeSetting(method="tome", r=[2, 2, 1]))
    frames = torch.zeros(2 * 2, 3, SIZE, SIZE)  # one batch: 2 videos x 2 frames
    expected = call_flops(find_mergeable(task.model)[0], *meta_call((frames,), {}), per=2)
    assert results["gflops"] == pytest.approx(expected.gflops)
