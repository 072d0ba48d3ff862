"""Progress of a long stage, readable where it lands: a Rich bar in a terminal, plain lines in a log.

A Rich bar written to a file (a SLURM log, nohup.out) shows nothing until its last frame at exit, so where
the stream is not a terminal a stage prints a line at its first item, at every ``percent`` of the work (a
second apart at least), after ``seconds`` without one, and at its last:
``ensemble outputs/ens: 120/5000 (2%), 30s, ETA 20m17s``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

SECONDS = 30.0  # a log line at least this often, so that a stalled stage shows as one
PERCENT = 10  # and one at every such share of the work,
GAP = 1.0  # unless the last came less than this ago: a stage over in a second has two lines, not eleven


def is_terminal(stream: TextIO) -> bool:
    """Whether a Rich bar on ``stream`` would animate: Rich's own test (a TTY, or ``FORCE_TERMINAL``...)."""
    return Console(file=stream).is_terminal


def duration(seconds: float) -> str:
    """``45s``, ``3m31s``, ``2h05m``: short enough for a log line."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Lines:
    """Plain progress lines of a count up to ``total`` on ``stream`` (stderr by default), each flushed, so a
    log shows how far a stage got and how long it has left.

    Args:
        total: the count at the end.
        description: what is counted, the start of every line.
        stream: where the lines go; None is ``sys.stderr`` at construction.
        seconds: the longest time without a line.
        percent: a line at every such share of ``total``.
    """

    def __init__(
        self,
        total: int,
        description: str,
        stream: TextIO | None = None,
        seconds: float = SECONDS,
        percent: int = PERCENT,
    ):
        self.total, self.description, self.seconds, self.percent = total, description, seconds, percent
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.printed = time.monotonic()

    def advance(self, count: int = 1) -> None:
        """``count`` more done; prints a line at the first, at a new ``percent`` step (``GAP`` after the
        last line at least), after ``seconds`` without one, and at the last."""
        before, self.done = self.done, self.done + count
        now = time.monotonic()
        step = self.percent * max(1, self.total)
        crossed = self.done * 100 // step > before * 100 // step and now - self.printed >= GAP
        if before == 0 or self.done >= self.total or crossed or now - self.printed >= self.seconds:
            self.printed = now
            print(self.line(now - self.start), file=self.stream, flush=True)

    def line(self, elapsed: float) -> str:
        """``description: done/total (p%), elapsed, ETA left``; the last line has no ETA."""
        share = 100 * self.done // max(1, self.total)
        text = f"{self.description}: {self.done}/{self.total} ({share}%), {duration(elapsed)}"
        if self.done < self.total:
            text += f", ETA {duration(elapsed / self.done * (self.total - self.done))}"
        return text


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """``items`` passed through, counted as each arrives (a worker pool's results as they finish): a Rich
    bar where stderr is a terminal, else ``Lines``; on stderr, so that stdout holds only the results."""
    if is_terminal(sys.stderr):
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            yield from progress.track(items, total=total, description=description)
        return
    lines = Lines(total, description)
    for item in items:
        lines.advance()
        yield item
