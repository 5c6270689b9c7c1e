"""Which videos an evaluation skipped (``skip_errors``), across DataLoader worker processes.

The decoders of every worker append one JSON line per skipped video to a small file the DataModule owns
(:class:`SkipLog`; an append of one short line is a single ``write``); the DataModule's ``take_skipped()``
(``data_modules.base.VideoDataModule``) reads and clears it after each evaluation, so the results can name the
videos (``vidtldr_pl.compare``)."""
from __future__ import annotations

import json
import os
import tempfile
import weakref

__all__ = ["SkipLog", "record_skip"]


def record_skip(log_path: str, video: str, reason: str) -> None:
    """Append ``{"video", "reason"}`` to the log (from any process)."""
    line = json.dumps({"video": video, "reason": reason}) + "\n"
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(line)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SkipLog:
    """A temporary file (removed with the object) that decoders append skipped videos to."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="vidtldr_skipped_", suffix=".jsonl")
        os.close(fd)
        self._finalizer = weakref.finalize(self, _unlink, self.path)

    def take(self) -> list[dict[str, str]]:
        """The videos recorded since the last call, each once, in the order first recorded; the log is cleared."""
        try:
            with open(self.path, "r+", encoding="utf-8") as f:
                lines = f.read().splitlines()
                f.seek(0)
                f.truncate()
        except FileNotFoundError:
            return []
        seen: dict[str, str] = {}
        for line in lines:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed worker
                continue
            seen.setdefault(str(item.get("video")), str(item.get("reason", "")))
        return [{"video": v, "reason": r} for v, r in seen.items()]

