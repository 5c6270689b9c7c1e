"""The errors a user sees: one line naming the file, key or value, and exit code 2 (``EXIT_USAGE``).

Every module raises these (or a subclass); the entry points (``vidtldr_pl.cli``, ``python -m`` tools) catch
``UserError`` and ``FileNotFoundError``, print ``error: <message>`` and exit with ``EXIT_USAGE``. Each class also
derives from the builtin type callers used to catch (ValueError, RuntimeError, FileNotFoundError), so existing
``except`` clauses keep working. Programming errors (anything else) keep their traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXIT_USAGE = 2  #: exit code of a usage / input error (argparse's convention)


class UserError(Exception):
    """An error in what the user gave (command line, config, data, checkpoint): ``str(err)`` is one line."""

    exit_code = EXIT_USAGE


class UsageError(UserError, ValueError):
    """A problem with the command line or the config files."""


class MergeOverrideError(UsageError):
    """A ``--merge.*`` option that cannot apply to the config."""


class ScheduleError(UserError, ValueError):
    """An r schedule that is malformed or does not fit the model."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be loaded into the model (says which file and which keys)."""


class UnknownWeightsError(CheckpointError, ValueError):
    """``builtin:<name>`` names no shipped weights file."""


class AnnotationError(UserError, ValueError):
    """A malformed annotation file (names the file, the entry and the key)."""


class IncompleteEvaluationError(UserError, ValueError):
    """An evaluation that did not see every video of the split."""


class TokenizerNotFoundError(UserError, FileNotFoundError):
    """No vocabulary at the given path, in the Hugging Face cache, or reachable on the Hub."""


class VideoDecodeError(UserError, RuntimeError):
    """A video could not be (fully) decoded. ``str(err)`` is ``"<path>: <reason>"``, one line.

    ``VideoDecodeError(message)`` (one argument) rebuilds the error from a message ending in a formatted
    ``VideoDecodeError: <path>: <reason>`` line -- what a DataLoader worker's re-raise passes (the worker's
    traceback as text) -- so the error keeps its type, path and reason across worker processes.

    Attributes:
        path: the file that failed.
        reason: human-readable cause.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        if reason is None:
            path, reason = _split_error_message(str(path))
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep it picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.path, self.reason))


def _split_error_message(message: str) -> tuple[str, str]:
    """``(path, reason)`` from the last ``[module.]VideoDecodeError: <path>: <reason>`` line of ``message`` (a
    formatted traceback), else from ``message`` itself. A path containing ``": "`` is split at its first one."""
    text = message.strip()
    for line in reversed(text.splitlines()):
        head, sep, rest = line.partition(f"{VideoDecodeError.__name__}: ")
        if sep and (not head or (head.endswith(".") and " " not in head)):
            text = rest
            break
    path, sep, reason = text.partition(": ")
    return (path, reason) if sep else ("<unknown file>", text)


def user_error_in(err: BaseException) -> BaseException | None:
    """The first ``UserError`` or ``FileNotFoundError`` in ``err``'s cause / context chain (jsonargparse and
    Lightning wrap what a constructor or hook raised), or None for a programming error."""
    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (UserError, FileNotFoundError)):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def exit_code_of(body: Callable[[], object]) -> int:
    """Run a tool's ``body``; a UserError or ValueError (a bad option value, a missing or malformed input) becomes
    one ``error:`` line on stderr and ``EXIT_USAGE``; 0 otherwise."""
    try:
        body()
    except (ValueError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


__all__ = [
    "EXIT_USAGE", "AnnotationError", "CheckpointError", "IncompleteEvaluationError", "MergeOverrideError", "exit_code_of",
    "ScheduleError", "TokenizerNotFoundError", "UnknownWeightsError", "UsageError", "UserError", "VideoDecodeError",
    "user_error_in",
]
