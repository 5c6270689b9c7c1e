"""End to end: ``python evaluate.py`` on an MSRVTT-format folder of real mp4 files with a UMT checkpoint in the
official fine-tuned layout, three merge settings (none / ToMe / vid-TLDR) in one invocation; every metric in the
results JSON equals a brute-force run of the official protocol (tests/retrieval_bruteforce.py) on the same frames.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from retrieval_bruteforce import bruteforce_metrics, bruteforce_scores, reinit_

from vidtldr_pl.data_modules.retrieval import MSRVTTDataModule
from vidtldr_pl.backbones import create_model
from vidtldr_pl.backbones.umt import load_umt_checkpoint
from vidtldr_pl.callbacks import TokenMerging
from vidtldr_pl.merging import build_schedule, patch, token_counts, unpatch
from vidtldr_pl.tasks import RetrievalTask
from vidtldr_pl.text import build_vocab

ROOT = Path(__file__).resolve().parents[1]
K_TEST = 4
R = [8, 4]  # umt_tiny: 4 frames x 4 x 4 patches = 64 tokens, 4 blocks
NUM_FRAMES, IMG_SIZE, EVAL_BATCH = 4, 64, 5
SEED = 3

# 12 videos; some have two or three captions (MSRVTT-format lists), so the text -> video ground truth is no diagonal
CAPTIONS = [
    ["a red ball rolls left", "a ball rolls on the floor"],
    "a man is playing guitar",
    ["dogs run in the park", "two dogs play outside", "a dog runs"],
    "a cat sleeps on a sofa",
    "a woman is cooking in a kitchen",
    ["a car drives on the road", "traffic on a busy road"],
    "a boy plays football in the park",
    "people dance on a stage",
    ["a man is singing a song", "a singer on a stage"],
    "a bird flies over the sea",
    "a girl reads a book",
    ["a chef cuts vegetables", "someone cooking food"],
]
NUM_TEXTS = sum(len(c) if isinstance(c, list) else 1 for c in CAPTIONS)


def write_video(path: Path, seed: int, frames: int = 16, size: int = 80) -> None:
    """A real mp4 (mpeg4) whose content differs per video and per frame; 80 px so the test transform resizes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.int32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.roll(base, shift=(i * (seed % 3 + 1), i * 2), axis=(0, 1))
            img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    """MSRVTT folder (videos/ + anno_downstream/), a vocab dir and an official-layout checkpoint of umt_tiny."""
    tmp = tmp_path_factory.mktemp("e2e")
    root = tmp / "msrvtt"
    (root / "videos").mkdir(parents=True)
    (root / "anno_downstream").mkdir()
    for i in range(len(CAPTIONS)):
        write_video(root / "videos" / f"video{i}.mp4", seed=i)
    test = [{"video": f"video{i}.mp4", "caption": c} for i, c in enumerate(CAPTIONS)]
    (root / "anno_downstream" / "msrvtt_ret_test1k.json").write_text(json.dumps(test))
    (root / "anno_downstream" / "msrvtt_ret_train9k.json").write_text(json.dumps(test))
    flat = [c for cap in CAPTIONS for c in (cap if isinstance(cap, list) else [cap])]
    vocab = build_vocab(flat)
    assert len(vocab) <= 128  # umt_tiny's vocabulary size
    tok = tmp / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(vocab))

    torch.manual_seed(SEED)
    model = reinit_(create_model("umt_tiny"), SEED)
    state = model.state_dict()
    assert not any("bert." in k or k.startswith("module.") for k in state)  # fine-tuned keys: no bert., no DDP prefix
    ckpt = tmp / "umt_tiny_msrvtt_ft.pth"
    # official fine-tuned file: torch.save of a dict with the unwrapped UMT's state dict under "model" + trainer state
    torch.save({"model": state, "optimizer": {}, "scheduler": {}, "scaler": {}, "config": {"k_test": K_TEST},
                "epoch": 4, "global_step": 120}, ckpt)
    return {"root": root, "tok": tok, "ckpt": ckpt, "state": state, "tmp": tmp}


def _datamodule(d) -> MSRVTTDataModule:
    return MSRVTTDataModule(str(d["root"]), tokenizer=str(d["tok"]), num_frames=NUM_FRAMES, img_size=IMG_SIZE,
                            eval_batch_size=EVAL_BATCH, num_workers=0)


def _loaded_model(d) -> torch.nn.Module:
    model = create_model("umt_tiny")
    report = load_umt_checkpoint(model, d["ckpt"])
    assert report.ok and not report.renamed_bert and report.loaded == len(d["state"])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in d["state"].items())
    return model.eval()


def _expected_metrics(model, videos, texts, txt2vid, vid2txt) -> tuple[dict, dict]:
    bf = bruteforce_scores(model, videos, texts["input_ids"], texts["attention_mask"], K_TEST)
    expected = {
        **{f"itm/{k}": v for k, v in bruteforce_metrics(bf["itm_v2t"], bf["itm_t2v"], txt2vid, vid2txt).items()},
        **{f"itc/{k}": v for k, v in bruteforce_metrics(bf["itc"], bf["itc"].T, txt2vid, vid2txt).items()},
    }
    return expected, bf


@pytest.mark.slow
def test_evaluate_py_three_merge_settings_match_bruteforce(setup_dir):
    d = setup_dir
    cfg = d["tmp"] / "msrvtt_tiny.yaml"
    results = d["tmp"] / "out" / "results.json"
    cfg.write_text(f"""
model:
  class_path: vidtldr_pl.tasks.RetrievalTask
  init_args: {{model: umt_tiny, checkpoint: {d["ckpt"]}, k_test: {K_TEST}, itm_batch_size: 3, text_batch_size: 7}}
data:
  class_path: vidtldr_pl.data_modules.retrieval.MSRVTTDataModule
  init_args:
    data_root: {d["root"]}
    tokenizer: {d["tok"]}
    num_frames: {NUM_FRAMES}
    img_size: {IMG_SIZE}
    eval_batch_size: {EVAL_BATCH}
    num_workers: 0
trainer: {{accelerator: cpu, logger: false, enable_progress_bar: false, enable_model_summary: false}}
compare:
  - {{name: none, method: none}}
  - {{method: tome, r: {R}}}
  - {{method: vidtldr, r: {R}}}
""")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # stdout is a pipe with rich's default width
    env["PYTHONPATH"] = str(ROOT / "tests")
    out = subprocess.run([sys.executable, "evaluate.py", "--config", str(cfg), f"--results={results}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(results.read_text())["runs"]
    assert [(r["name"], r["method"], r["r"]) for r in rows] == [("none", "none", None), ("tome", "tome", R),
                                                                 ("vidtldr", "vidtldr", R)]
    # the results table, whole although stdout is no terminal: a title, the headers, one line per method with
    # its numbers unabridged
    assert "RetrievalTask on MSRVTTDataModule (test split)" in out.stdout
    for header in ("t2v R@1", "t2v R@10", "v2t MdR", "GFLOPs", "tokens per layer", "videos/s"):
        assert header in out.stdout, out.stdout
    table_rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("│")}
    assert list(table_rows) == ["none", "tome", "vidtldr"], out.stdout
    for row in rows:
        cells = [c.strip() for c in table_rows[row["name"]].split("│")[2:-1]]
        assert cells[:4] == [f"{row[k]:.2f}" for k in ("itm/img_r1", "itm/img_r5", "itm/img_r10")] + \
            [f"{row['itm/img_MdR']:.1f}"], out.stdout
    assert f"results written to {results}" in out.stdout.replace("\n", "")

    # the same frames: decoded by the same datamodule's test loader, ordered by video index
    dm = _datamodule(d)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    index = torch.cat([b["video_index"] for b in batches])
    videos = torch.cat([b["video"] for b in batches])[index.argsort()]
    assert videos.shape == (len(CAPTIONS), NUM_FRAMES, 3, IMG_SIZE, IMG_SIZE)
    texts = dm.eval_texts("test")
    split = dm.index("test")
    txt2vid, vid2txt = list(split.txt2vid), list(split.vid2txt)
    assert texts["input_ids"].shape[0] == NUM_TEXTS == len(txt2vid) > len(CAPTIONS)

    model = _loaded_model(d)
    # TokenMerging (which compare installs) switches the encoder to "fused" attention, the VisionConfig default
    assert all(block.attn.mode == "fused" for block in model.vision_encoder.encoder.blocks)
    metric_keys = None
    for row in rows:
        if row["method"] == "none":
            unpatch(model.vision_encoder)
        else:
            patch(model.vision_encoder, row["method"], r=R)
        try:
            expected, bf = _expected_metrics(model, videos, texts, txt2vid, vid2txt)
        finally:
            unpatch(model.vision_encoder)
        metric_keys = sorted(expected)
        # the metrics are rank-based: evaluate.py's batched encoder and ITM-cache path give the same ranks as the
        # one-video / one-pair brute force, so they are compared exactly
        got = {k: row[k] for k in expected}
        assert got == expected, (row["name"], {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]})
        assert row["num_videos"] == len(CAPTIONS) and row["num_texts"] == NUM_TEXTS
        # non-trivial setting: k_test cuts (-100 outside the top-k) and the metrics are not saturated
        assert (bf["itm_v2t"] == -100).any() and (bf["itm_t2v"] == -100).any()
        assert 0 < row["itm/txt_r1"] < 100 or 0 < row["itm/img_r1"] < 100
    assert len(metric_keys) == 26

    # each method changes the features differently (so a run evaluated with the wrong merging would fail above)
    none, tome, vidtldr = rows
    for a, b in ((none, tome), (none, vidtldr), (tome, vidtldr)):
        assert any(a[k] != b[k] for k in metric_keys), (a["name"], b["name"])
    # tokens after each block: 64 without merging; r = [8, 4] removes 8 in block 0 and 4 in block 1
    assert none["tokens_per_layer"] == [64, 64, 64, 64]
    assert tome["tokens_per_layer"] == vidtldr["tokens_per_layer"] == token_counts(build_schedule(R, 4), 64) \
        == [56, 52, 52, 52]
    assert none["gflops"] > 0 and tome["gflops"] < none["gflops"] and vidtldr["gflops"] < none["gflops"]


@pytest.mark.slow
def test_itm_cache_off_gives_the_same_scores(setup_dir):
    """itm_cache_mb: 0 (pairwise / per-query cross-attention keys and values) vs the default cache of every video's
    keys and values: the same re-ranked scores and metrics (with vid-TLDR merging, so sequences are shortened)."""
    d = setup_dir
    tasks = []
    for cache_mb in (2048.0, 0.0):
        task = RetrievalTask("umt_tiny", checkpoint=str(d["ckpt"]), k_test=K_TEST, itm_batch_size=3,
                             itm_cache_mb=cache_mb)
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[TokenMerging("vidtldr", r=R)])
        trainer.test(task, datamodule=_datamodule(d), verbose=False)
        tasks.append(task)
    cached, uncached = tasks
    assert cached.results["tokens_per_layer"] == [56, 52, 52, 52]
    assert torch.equal(cached.scores["itc_v2t"], uncached.scores["itc_v2t"])
    for key in ("itm_v2t", "itm_t2v"):
        a, b = cached.scores[key], uncached.scores[key]
        assert torch.equal(a == -100, b == -100) and (a == -100).any()
        # bit-equal here; the two paths compute the keys / values in different batch shapes (chunks of
        # itm_batch_size videos vs one video), which another BLAS build may round differently: a 1e-6 margin
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert {k: v for k, v in cached.results.items() if k != "videos_per_s"} == \
        {k: v for k, v in uncached.results.items() if k != "videos_per_s"}
