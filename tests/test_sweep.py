"""The sweep evaluates every (method x schedule) point with each clip decoded once, and writes its table, JSON and
Pareto plot (umt_tiny, 6 real mp4 clips in tmp_path)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidtldr_pl.data_modules import video as video_module
from vidtldr_pl import sweep
from vidtldr_pl.text import build_vocab

CAPTIONS = ["a red ball rolls left", "a man plays guitar", "dogs run in the park", "a cat sleeps",
            "a car drives on a road", "a bird flies over the sea"]


def write_clip(path: Path, seed: int, frames: int = 8, size: int = 64) -> None:
    """A real mp4 whose content differs per clip and per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.roll(base, shift=(i, 2 * i), axis=(0, 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tiny_retrieval_config(tmp: Path) -> Path:
    """An MSRVTT-format folder, a vocabulary and a config for umt_tiny (4 frames x 4 x 4 patches, 4 blocks)."""
    root = tmp / "msrvtt"
    (root / "videos").mkdir(parents=True)
    (root / "anno_downstream").mkdir()
    for i in range(len(CAPTIONS)):
        write_clip(root / "videos" / f"video{i}.mp4", seed=i)
    ann = [{"video": f"video{i}.mp4", "caption": c} for i, c in enumerate(CAPTIONS)]
    (root / "anno_downstream" / "msrvtt_ret_test1k.json").write_text(json.dumps(ann))
    tok = tmp / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(build_vocab(CAPTIONS)))
    cfg = tmp / "tiny.yaml"
    cfg.write_text(f"""
model:
  class_path: vidtldr_pl.tasks.RetrievalTask
  init_args: {{model: umt_tiny, k_test: 3, itm_batch_size: 4, text_batch_size: 4}}
data:
  class_path: vidtldr_pl.data_modules.retrieval.MSRVTTDataModule
  init_args: {{data_root: {root}, tokenizer: {tok}, num_frames: 4, img_size: 64, eval_batch_size: 4, num_workers: 0}}
trainer: {{accelerator: cpu, logger: false, enable_model_summary: false, default_root_dir: {tmp}}}
""")
    return cfg


def test_sweep_decodes_each_clip_once(tmp_path, monkeypatch, capsys):
    decodes: list[str] = []
    original = video_module.VideoDecoder.__call__

    def counting(self, path, rng=None):
        decodes.append(str(path))
        return original(self, path, rng)

    monkeypatch.setattr(video_module.VideoDecoder, "__call__", counting)
    cfg = tiny_retrieval_config(tmp_path)
    out = tmp_path / "sweep"
    code = sweep.main(["--config", str(cfg), "--methods", "none,tome,vidtldr", "--schedules", "[8,4];constant:2",
                       "--out", str(out)])
    assert code == 0
    n = len(CAPTIONS)
    assert len(decodes) == n and len(set(decodes)) == n  # every clip decoded exactly once for 5 evaluations
    payload = json.loads((out / "sweep.json").read_text())
    meta = payload["config"]["sweep"]
    assert meta["decoded_clips"] == n and meta["split_clips"] == n and meta["evaluations"] == 5
    rows = payload["runs"]
    assert [(r["method"], r["r"]) for r in rows] == [
        ("none", None), ("tome", [8, 4, 0, 0]), ("vidtldr", [8, 4, 0, 0]), ("tome", [2, 2, 2, 2]),
        ("vidtldr", [2, 2, 2, 2])]
    assert all(r["num_videos"] == n and isinstance(r["videos_per_s"], float) for r in rows)
    assert rows[0]["tokens_per_layer"] == [64] * 4 and rows[1]["tokens_per_layer"] == [56, 52, 52, 52]
    assert rows[1]["gflops"] < rows[0]["gflops"]
    printed = capsys.readouterr().out
    assert f"decoded {n} clips for 5 evaluations of the test split ({n} clips in the split: each decoded once)" in printed
    table = (out / "sweep.md").read_text().splitlines()
    assert len(table) == 2 + 5 and "Pareto" in table[0]
    assert Image.open(out / "pareto.png").size[0] > 500 and (out / "pareto.svg").read_text().lstrip().startswith("<?xml")
    (out / "sweep.md").unlink()
    (out / "pareto.png").unlink()
    assert sweep.main(["--replot", "--out", str(out)]) == 0  # redrawn from sweep.json alone
    assert (out / "sweep.md").read_text().splitlines() == table and (out / "pareto.png").is_file()


def test_sweep_rejects_an_unknown_method(tmp_path, capsys):
    assert sweep.main(["--config", str(tmp_path / "none.yaml"), "--methods", "none,bogus", "--out",
                       str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize("row,key", [({"itm/img_r1": 1.0, "top1": 2.0}, "itm/img_r1"), ({"top1": 3.0}, "top1")])
def test_metric_of_picks_the_task_metric(row, key):
    assert sweep.metric_of(row)[0] == key


def test_variants_run_one_method_with_several_option_sets():
    """--variants labels become sweep methods: each row carries its method and options, the cost counts them."""
    variants = sweep.parse_variants('tome_spatial=tome_video:{"neighbourhood": "spatial"}; '
                                    'tome_hybrid=tome_video:{"mode": "hybrid", "threshold": 0.5}')
    assert variants == {"tome_spatial": ("tome_video", {"neighbourhood": "spatial"}),
                        "tome_hybrid": ("tome_video", {"mode": "hybrid", "threshold": 0.5})}
    methods = sweep.check_methods("none,tome,tome_spatial,tome_hybrid", variants)
    calls = []

    class Cost:
        depth, num_tokens = 6, 288

        def __call__(self, method, schedule, options=None):
            calls.append((method, options))
            return 1.0

    settings = sweep.build_settings(methods, [("[72,36,18]", [72, 36, 18])], Cost(), [1.0], "front", variants)
    rows = {s.name: s for s, _ in settings}
    assert rows["tome_spatial [72,36,18]"].method == "tome_video"
    assert rows["tome_spatial [72,36,18]"].method_options == {"neighbourhood": "spatial"}
    assert sweep.method_label(rows["tome_hybrid [72,36,18]"]) == "tome_hybrid"
    assert sweep.method_label(rows["tome [72,36,18]"]) == "tome"
    assert ("tome_video", {"mode": "hybrid", "threshold": 0.5}) in calls  # budgets fitted with the variant's options
    assert sweep.check_methods("all", variants)[-2:] == ["tome_spatial", "tome_hybrid"]


@pytest.mark.parametrize("text, says", [
    ("spatial=tome_video:{neighbourhood: spatial}", "not JSON"),
    ("tome=tome_video:{}", "is a method's name"),
    ("x=nope:{}", "METHOD one of"),
    ('x=tome_video:{"neighbourhood": "diagonal"}', "neighbourhood"),
])
def test_a_bad_variant_is_refused_in_one_line(text, says):
    with pytest.raises(ValueError, match=says):
        sweep.parse_variants(text)


def test_append_keeps_the_earlier_points_and_one_reference(tmp_path):
    """--append: the earlier rows first, this run's after them, its unmerged reference not added twice; a sweep on
    another split or number of clips is refused."""
    earlier = {"runs": [{"method": "none", "name": "none"}, {"method": "tome", "name": "tome [8]"}],
               "config": {"sweep": {"split": "test", "decoded_clips": 12}}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(earlier))
    loaded = sweep.read_sweep(path)
    new = [{"method": "none", "name": "none (loyalty reference)"}, {"method": "thr", "name": "thr [8]"}]
    assert [r["name"] for r in sweep.appended(loaded, new)] == ["none", "tome [8]", "thr [8]"]
    assert sweep.appended(None, new) == new
    sweep.check_comparable(loaded, path, "test", 12)
    with pytest.raises(ValueError, match="12 clips"):
        sweep.check_comparable(loaded, path, "test", 10)


def test_append_keeps_the_first_runs_provenance():
    """After --append, sweep.json's meta is the first run's, with each appended run's options listed under it."""
    class Cli:
        config = {"model": "x"}

    earlier = {"runs": [], "config": {"sweep": {"split": "test", "methods": "tome"}, "config": {"model": "x"}}}
    once = sweep.provenance(earlier, {"methods": "thr"}, Cli())
    assert once["sweep"]["methods"] == "tome" and once["sweep"]["appended"] == [{"methods": "thr"}]
    twice = sweep.provenance({"runs": [], "config": once}, {"methods": "rlt"}, Cli())
    assert [a["methods"] for a in twice["sweep"]["appended"]] == ["thr", "rlt"]
    assert sweep.provenance(None, {"methods": "tome"}, Cli())["sweep"] == {"methods": "tome"}
