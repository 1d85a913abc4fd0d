"""What the command line tells its user on stderr: progress with an ETA, warnings, errors.

Results go to stdout and files; everything here goes to stderr, so that
``python -m skdccm benchmark ... > log`` keeps the results apart. A leaf module: it imports
nothing from the rest of skdccm.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

#: Levels of :class:`Progress`: ``-q``, the default, ``-v``.
QUIET, NORMAL, VERBOSE = 0, 1, 2

# Without a terminal (a log file) an updating line cannot be redrawn: write a line at most
# this often instead.
LOG_INTERVAL_SECONDS = 30.0


class CommandError(Exception):
    """A user error the command reports in one line (no traceback)."""


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message with line breaks folded; the type's name too
    unless it is an error of the user's input (those messages say what to do)."""
    text = " ".join(str(exc).split()) or "(no message)"
    if isinstance(exc, (CommandError, ValueError, FileNotFoundError, ImportError)):
        return text
    return f"{type(exc).__name__}: {text}"


class Progress:
    """Progress lines with an ETA on stderr, at a level: quiet, normal or verbose.

    On a terminal one line is redrawn in place; elsewhere (a log file) a line is written
    at most every :data:`LOG_INTERVAL_SECONDS` and at the end.

    Parameters
    ----------
    level : {0, 1, 2}
        0 (``-q``) writes nothing, 1 progress lines, 2 (``-v``) also one line per epoch.
    stream : text stream, default=None
        Where to write (default: ``sys.stderr`` at the time of writing).
    """

    def __init__(self, level: int = NORMAL, stream: TextIO | None = None) -> None:
        self.level = level
        self._stream = stream
        self._open_line = False
        self._last_log = -float("inf")

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def info(self, text: str) -> None:
        """A line of its own (not at ``-q``)."""
        if self.level >= NORMAL:
            self.end_line()
            print(text, file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        """A line of its own at ``-v`` only."""
        if self.level >= VERBOSE:
            self.end_line()
            print(text, file=self.stream, flush=True)

    def update(self, label: str, done: int, total: int | None, started: float,
               *, keep: bool = False) -> None:
        """``label done/total [elapsed, ETA]``: redrawn on a terminal, else rate-limited.

        ``keep`` writes the line whatever the rate and leaves it on screen.
        """
        if self.level < NORMAL:
            return
        elapsed = time.perf_counter() - started
        text = f"{label} {done}/{total if total else '?'} [{format_duration(elapsed)}"
        if total and 0 < done < total:
            text += f", ETA {format_duration(elapsed / done * (total - done))}"
        text += "]"
        if self.stream.isatty():
            self.stream.write("\r" + text.ljust(79))
            self._open_line = True
            if keep:
                self.end_line()
            self.stream.flush()
        elif keep or elapsed - self._last_log >= LOG_INTERVAL_SECONDS or done == 1:
            self._last_log = elapsed
            print(text, file=self.stream, flush=True)

    def end_line(self) -> None:
        """End a line left open by :meth:`update` (before something else is written)."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False


class EpochProgress:
    """Training callback reporting epochs with an ETA to a :class:`Progress`.

    Parameters
    ----------
    progress : Progress
        Where to report.
    label : str
        What trains (``"training dccm"``).
    total : callable, default=None
        ``total(estimator) -> int | None``: the epochs the whole fit will run, asked at the
        first epoch (None: unknown, no ETA).
    describe : callable, default=None
        ``describe(record, total) -> str``: the per-epoch line written at ``-v``.
    """

    def __init__(self, progress: Progress, label: str, total=None, describe=None) -> None:
        self.progress = progress
        self.label = label
        self.total = total
        self.describe = describe
        self.epochs = 0
        self.planned: int | None = None
        self.started = time.perf_counter()

    def __call__(self, estimator: Any, record: dict[str, Any]) -> bool:
        if self.epochs == 0:
            self.started = time.perf_counter() - record.get("seconds", 0.0)
            self.planned = self.total(estimator) if self.total else None
        self.epochs += 1
        # The loop's own plan can be longer than the parameters say (min_steps stretches
        # the preset's epochs on small data sets).
        if self.planned is not None:
            self.planned = max(self.planned, int(record.get("planned_epochs") or 0))
        if self.describe is not None:
            self.progress.detail(self.describe(record, self.planned or self.epochs))
        last = self.planned is not None and self.epochs >= self.planned
        self.progress.update(f"{self.label}: epoch", self.epochs, self.planned, self.started,
                             keep=last)
        return False


@contextmanager
def summarised_warnings(progress: Progress, what: str) -> Iterator[None]:
    """Collect the warnings raised in the block; write each distinct one once, with a count.

    Loading a folder can warn once per file (truncated files, odd palettes); the user sees
    one line per kind of problem instead of a screenful of Python warnings.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    counts = Counter(" ".join(str(w.message).split()) for w in caught)
    for message, count in list(counts.items())[:5]:
        times = f" ({count} times)" if count > 1 else ""
        print(f"warning while {what}: {message}{times}", file=progress.stream, flush=True)
    if len(counts) > 5:
        print(f"warning while {what}: ... and {len(counts) - 5} other kinds of warning",
              file=progress.stream, flush=True)
