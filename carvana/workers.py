"""Per-image work spread over processes: the ensemble, pseudo-label and post-processing stages share it."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap_unordered(func: Callable[[T], R], items: Sequence[T], workers: int = 0) -> Iterator[R]:
    """``func`` over ``items`` in ``workers`` processes (0 = one per CPU, never more than items), in the order
    they finish; with one worker plain ``map`` in this process, which keeps tracebacks and profiles simple.
    ``func`` must pickle (a module-level function or a ``functools.partial`` of one)."""
    workers = min(workers or os.cpu_count() or 1, max(1, len(items)))
    if workers == 1:
        yield from map(func, items)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap_unordered(func, items, chunksize=max(1, min(16, len(items) // (workers * 4))))
