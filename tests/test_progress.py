"""Progress of long phases: log lines at least every interval off a terminal, nothing for short phases or on other
ranks; the phases that use it (caption encoding, ITM re-ranking per direction, evaluation batches); a quiet CLI."""
from __future__ import annotations

import io
import time
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from retrieval_bruteforce import TinyRetrievalData
from vidtldr_pl.callbacks.progress import LogProgressBar
from vidtldr_pl.progress import Progress, progress_enabled, track
from vidtldr_pl.tasks import rerank_scores


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_log_lines_while_a_phase_runs_then_done():
    stream = io.StringIO()
    with Progress("encoding captions", total=4, unit="captions", stream=stream, interval=0.05, enabled=True,
                  terminal=False) as bar:
        for _ in range(4):
            time.sleep(0.08)
            bar.advance()
    lines = _lines(stream)
    assert len(lines) >= 3, lines
    assert all(line.startswith("encoding captions: ") for line in lines)
    assert any("/4 captions (" in line and " left" in line for line in lines[:-1])
    assert lines[-1].startswith("encoding captions: 4/4 captions, done in ")


def test_a_single_slow_step_still_gets_lines():
    stream = io.StringIO()
    with Progress("one slow step", total=1, stream=stream, interval=0.05, enabled=True, terminal=False) as bar:
        time.sleep(0.3)
        bar.advance()
    assert sum("0/1 steps (0 %)" in line for line in _lines(stream)) >= 2


def test_short_phase_disabled_phase_and_other_ranks_are_silent(monkeypatch):
    stream = io.StringIO()
    assert list(track(range(3), "quick", stream=stream, interval=5.0, enabled=True, terminal=False)) == [0, 1, 2]
    with Progress("off", total=1, stream=stream, interval=0.01, enabled=False, terminal=False):
        time.sleep(0.1)
    assert stream.getvalue() == ""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    assert progress_enabled()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not progress_enabled()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    monkeypatch.setenv("VIDTLDR_PROGRESS", "0")
    assert not progress_enabled()


def test_short_phases_after_a_silence_each_say_they_start():
    """Short phases one after another would leave a log silent for their sum: after an interval without a line,
    a phase writes its first line when it starts; right after a line, a short phase stays silent."""
    stream = io.StringIO()
    list(track(range(2), "first", stream=stream, interval=0.05, enabled=True, terminal=False))
    assert stream.getvalue() == ""  # a new stream has not been silent yet
    time.sleep(0.08)
    list(track(range(2), "second", stream=stream, interval=0.05, enabled=True, terminal=False))
    list(track(range(2), "third", stream=stream, interval=0.05, enabled=True, terminal=False))
    time.sleep(0.08)
    list(track(range(2), "fourth", stream=stream, interval=0.05, enabled=True, terminal=False))
    starts = [line.split(":")[0] for line in _lines(stream) if "0/2 steps (0 %)" in line]
    assert starts == ["second", "fourth"], _lines(stream)


def test_terminal_gets_a_live_bar_not_lines():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with Progress("live", total=2, stream=stream, interval=0.01, enabled=True) as bar:
        time.sleep(0.05)
        bar.advance(2)
    assert "live: " not in stream.getvalue()  # rich's bar (transient), never the log-line form


def test_rerank_shows_each_direction(monkeypatch, capsys):
    monkeypatch.setenv("VIDTLDR_PROGRESS_INTERVAL", "0.02")
    sim = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    def slow_itm(v, t):
        time.sleep(0.1)
        return (v * 10 + t).float()

    plain = rerank_scores(sim, lambda v, t: (v * 10 + t).float(), k_test=2)
    shown = rerank_scores(sim, slow_itm, k_test=2, progress=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, shown))
    err = capsys.readouterr().err
    assert "ITM re-ranking, video -> text (top 2): " in err and "/3 queries" in err
    assert "ITM re-ranking, text -> video (top 2): " in err and "/4 queries" in err
    rerank_scores(sim, slow_itm, k_test=2)  # progress off by default (a library function)
    assert capsys.readouterr().err == ""


def test_caption_encoding_shows_progress(monkeypatch, capsys):
    from vidtldr_pl.tasks import RetrievalTask

    monkeypatch.setenv("VIDTLDR_PROGRESS_INTERVAL", "0.01")
    task = RetrievalTask("umt_tiny", text_batch_size=2)
    slow = task.model.encode_text

    def encode_text(ids, mask):
        time.sleep(0.03)
        return slow(ids, mask)

    monkeypatch.setattr(task.model, "encode_text", encode_text)
    ids = torch.randint(1, 100, (6, 5))
    out = task.encode_texts({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert out["itc"].shape[0] == 6
    err = capsys.readouterr().err
    assert "encoding captions: " in err and "6/6 captions, done in" in err


class _Slow(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        time.sleep(0.03)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        time.sleep(0.03)

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_log_progress_bar_in_a_fit_and_a_test(tmp_path, capsys):
    loader = DataLoader(TensorDataset(torch.ones(8, 2)), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                         callbacks=[LogProgressBar(interval=0.02)])
    trainer.fit(_Slow(), loader, loader)
    trainer.test(_Slow(), loader, verbose=False)
    err = capsys.readouterr().err
    assert "Training epoch 0: " in err and "/4 batches" in err
    assert "Validation: " in err and "Testing: " in err
    assert "\r" not in err  # lines, not a bar redrawn in place


class TinyFit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        time.sleep(0.05)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyFitData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)


class SlowTinyRetrievalData(TinyRetrievalData):
    """Four test batches that each take 50 ms to load: the test phase outlasts the progress interval however fast
    the model runs (a single fast batch printed no line at all on an idle CI machine)."""

    def test_dataloader(self) -> DataLoader:
        def collate(items):
            time.sleep(0.05)
            return torch.utils.data.default_collate(items)

        loader = super().test_dataloader()
        return DataLoader(loader.dataset, batch_size=1, collate_fn=collate)


@pytest.mark.parametrize("stage", ["evaluate", "fit"])
def test_cli_output_has_no_adverts_or_foreign_warnings(stage, tmp_path, monkeypatch, capfd):
    """evaluate.py / train.py print no Lightning "Tip", no ModelCheckpoint override note, no torch pytree
    deprecation; off a terminal the batches show as log lines."""
    from vidtldr_pl.cli import run_cli
    from vidtldr_pl.preflight import resolve_config_args

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIDTLDR_PROGRESS_INTERVAL", "0.01")
    cfg = tmp_path / "tiny.yaml"
    if stage == "evaluate":
        cfg.write_text("""
model: {class_path: vidtldr_pl.tasks.RetrievalTask, init_args: {model: umt_tiny, k_test: 2}}
data: {class_path: test_progress.SlowTinyRetrievalData, init_args: {num_videos: 4}}
trainer: {accelerator: cpu, logger: {class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: logs}}}
compare: [{method: none}, {method: tome, r: [4]}]
""")
    else:
        cfg.write_text("""
model: {class_path: test_progress.TinyFit}
data: {class_path: test_progress.TinyFitData}
trainer: {accelerator: cpu, max_epochs: 1, default_root_dir: run, logger: false, log_every_n_steps: 1}
""")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_cli(stage, resolve_config_args(["--config", str(cfg)])) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err + "\n".join(f"{w.filename}:{w.lineno}: {w.message}" for w in caught)
    for unwanted in ("Tip", "will override", "LeafSpec", "eprecat", "No seed found"):
        assert unwanted not in text, (unwanted, text[-3000:])
    assert not caught, [f"{w.filename}:{w.lineno}: {w.message}" for w in caught]
    assert ("Testing: " if stage == "evaluate" else "Training epoch 0: ") in captured.err
