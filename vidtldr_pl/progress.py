"""Progress of long phases (clip generation, caption encoding, ITM re-ranking, evaluation batches).

One rule everywhere: on a terminal a live rich bar (on stderr, removed when done); elsewhere (CI logs, pipes, files)
a plain line on stderr at least every ``interval`` seconds while a phase runs, so a log never goes quiet for long,
and nothing for phases shorter than that, unless the stream has had no progress line for ``interval`` seconds: then
a phase says so when it starts (several short phases in a row would otherwise leave a long silence). Silent on processes other than rank 0 and with ``VIDTLDR_PROGRESS=0``.

    from vidtldr_pl.progress import track
    for i in track(range(n), "generating clips", unit="clips"):
        ...

    with Progress("encoding captions", total=n, unit="captions") as bar:
        for chunk in chunks:
            ...
            bar.advance(len(chunk))
"""
from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 5.0  # a line at most this far apart in logs (the goal is 10 s; half leaves room on a busy CPU)
_LAST_LINE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # stream -> when a progress line last went to it


def _silent_for(stream: TextIO) -> float:
    """Seconds since the last progress line on ``stream`` (since it was first seen, for a new stream)."""
    now = time.monotonic()
    try:
        return now - _LAST_LINE.setdefault(stream, now)
    except TypeError:  # a stream that takes no weak reference: never counts as silent
        return 0.0


def progress_enabled() -> bool:
    """False on processes other than rank 0 (Lightning's rank, else RANK / LOCAL_RANK) and with VIDTLDR_PROGRESS=0."""
    if os.environ.get("VIDTLDR_PROGRESS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        rank = getattr(rank_zero_only, "rank", None)
    except ImportError:  # pragma: no cover - lightning is a dependency
        rank = None
    if rank is None:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    return rank == 0


def interval_s() -> float:
    """Seconds between log lines: ``VIDTLDR_PROGRESS_INTERVAL`` or 5."""
    try:
        return max(0.001, float(os.environ.get("VIDTLDR_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Progress of one phase of ``total`` steps (None: unknown). Use as a context manager; ``advance(n)`` counts.

    Args:
        description: what runs, e.g. "ITM re-ranking, text -> video".
        total: number of steps, or None.
        unit: what a step is ("captions", "queries", "batches").
        stream: where to write (default stderr).
        interval: seconds between log lines when ``stream`` is not a terminal (default ``interval_s()``).
        enabled: None: ``progress_enabled()``.
        terminal: None: ``stream.isatty()``; False forces log lines (tests).
    """

    def __init__(self, description: str, total: int | None = None, unit: str = "steps", *,
                 stream: TextIO | None = None, interval: float | None = None, enabled: bool | None = None,
                 terminal: bool | None = None) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0
        self.postfix = ""
        self._stream = stream
        self._interval = interval_s() if interval is None else interval
        self._enabled = progress_enabled() if enabled is None else enabled
        self._terminal = terminal
        self._start = 0.0
        self._printed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich = None
        self._task = None

    # ------------------------------------------------------------------ use
    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close(quiet=exc[0] is not None)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more steps done."""
        self.completed += n
        if self._rich is not None:
            self._rich.update(self._task, completed=self.completed)

    def set_postfix(self, text: str) -> None:
        """Extra text shown after the count (e.g. "loss 0.52")."""
        self.postfix = text
        if self._rich is not None:
            self._rich.update(self._task, description=self._label())

    def start(self) -> None:
        self._start = time.monotonic()
        if not self._enabled:
            return
        stream = self._stream or sys.stderr
        terminal = self._terminal if self._terminal is not None else bool(getattr(stream, "isatty", lambda: False)())
        if terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit),
                       TimeElapsedColumn(), TimeRemainingColumn()]
            self._rich = RichProgress(*columns, console=Console(file=stream), transient=True,
                                      redirect_stdout=False, redirect_stderr=False)
            self._rich.start()
            self._task = self._rich.add_task(self._label(), total=self.total)
            return
        if _silent_for(stream) >= self._interval:  # short phases one after another: say each, so the log never
            self._write(self.line())                # stays silent for more than about one interval
            self._printed = True
        self._thread = threading.Thread(target=self._heartbeat, name="vidtldr-progress", daemon=True)
        self._thread.start()

    def close(self, quiet: bool = False) -> None:
        """End the phase: a last line "done in ..." when lines were written (nothing for a short phase, nothing with
        ``quiet``)."""
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._printed and not quiet:
                self._write(f"{self.description}: {self._count()} {self.unit}, done in "
                            f"{_duration(time.monotonic() - self._start)}")

    # ------------------------------------------------------------------ output
    def _label(self) -> str:
        return f"{self.description} ({self.postfix})" if self.postfix else self.description

    def _count(self) -> str:
        return f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"

    def line(self) -> str:
        """The current state as one line: "<description>: 120/500 queries (24 %), 31 s, ~1:38 left"."""
        elapsed = time.monotonic() - self._start
        text = f"{self.description}: {self._count()} {self.unit}"
        if self.total:
            text += f" ({100 * self.completed / self.total:.0f} %)"
        text += f", {_duration(elapsed)}"
        if self.total and 0 < self.completed < self.total:
            text += f", ~{_duration(elapsed * (self.total - self.completed) / self.completed)} left"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (ValueError, OSError):  # stream closed at interpreter exit
            pass
        try:
            _LAST_LINE[stream] = time.monotonic()
        except TypeError:
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._interval):
            self._write(self.line())
            self._printed = True


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "steps", **options) -> Iterator[T]:
    """Iterate ``items`` while showing ``Progress`` (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(description, total=total, unit=unit, **options) as bar:
        for item in items:
            yield item
            bar.advance()


__all__ = ["DEFAULT_INTERVAL_S", "Progress", "interval_s", "progress_enabled", "track"]
