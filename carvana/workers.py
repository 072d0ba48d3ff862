"""Per-image work spread over processes: the ensemble, pseudo-label and post-processing stages share it, and
every pool sizes itself to ``available_cpus``, the CPUs this process may use rather than the machine's."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.pool import Pool
from typing import Any, TypeVar

import cv2

from carvana.errors import CarvanaError

T = TypeVar("T")
R = TypeVar("R")

SLURM_CPUS = "SLURM_CPUS_PER_TASK"


def available_cpus() -> int:
    """The CPUs this process may use, not the machine's: its affinity mask (what taskset, a cpuset or SLURM's
    binding leave it), and at most ``SLURM_CPUS_PER_TASK`` where SLURM allocates without binding. A pool of
    ``os.cpu_count()`` processes on 4 of 64 CPUs would time-slice 64 processes on those 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get(SLURM_CPUS, "")
    if slurm:
        if not slurm.isdigit() or int(slurm) < 1:
            raise CarvanaError(f"{SLURM_CPUS}={slurm!r}: not a CPU count")
        cpus = min(cpus, int(slurm))
    return cpus


def _start_worker(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    if cv2.getNumThreads() != 1:  # a spawned or forkserver worker; a forked one inherits 1 from ``pool``
        cv2.setNumThreads(1)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's thread count set to ``count`` in this process for the block, then given back."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


@contextlib.contextmanager
def pool(
    workers: int, initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[Pool]:
    """A process pool whose workers run OpenCV on one thread each: the pool already spreads the images over
    every CPU, and OpenCV's own threads in each worker time-slice against the other workers (the K=10
    ensemble ran 1.5x slower per process in a pool of 2 than alone, bench/results.md). This process runs
    OpenCV on one thread too while the pool lives: forked workers inherit the setting, and changing it in
    a forked worker, once this process has started OpenCV's threads, hangs."""
    with opencv_threads(1), multiprocessing.Pool(workers, _start_worker, (initializer, initargs)) as procs:
        yield procs


def imap_unordered(func: Callable[[T], R], items: Sequence[T], workers: int = 0) -> Iterator[R]:
    """``func`` over ``items`` in ``workers`` processes (0 = one per available CPU, never more than items), in
    the order they finish; with one worker plain ``map`` in this process, which keeps tracebacks and profiles
    simple. ``func`` must pickle (a module-level function or a ``functools.partial`` of one)."""
    workers = min(workers or available_cpus(), max(1, len(items)))
    if workers == 1:
        yield from map(func, items)
        return
    chunksize = max(1, min(16, len(items) // (workers * 4)))
    with pool(workers) as processes:
        yield from processes.imap_unordered(func, items, chunksize=chunksize)
