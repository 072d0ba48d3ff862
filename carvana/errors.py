"""User-facing errors: the entry points print these as one line and exit non-zero, with no traceback.

``run_task`` runs a Hydra task and ``run_command`` a command-line action that way; the ``check_*`` helpers
are the argument checks the stages share, each raising a ``CarvanaError``. Kept free of heavy imports, so
that ``carvana ensemble --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
C = TypeVar("C")


class CarvanaError(Exception):
    """Bad input or setting; the message names the file or setting at fault and how to fix it."""


def print_error(error: CarvanaError) -> int:
    """Print ``error: <message>`` on stderr; returns the exit status for bad input, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def run_task(task: Callable[[C], T], cfg: C) -> T:
    """Run a Hydra task (``train.py``, ``predict.py``); a ``CarvanaError`` becomes one line, exit status 2."""
    try:
        return task(cfg)
    except CarvanaError as error:
        sys.exit(print_error(error))


def run_command(action: Callable[[], str | None]) -> int:
    """Run a command-line action: print what it returns (nothing for None) and give 0, or, on a
    ``CarvanaError``, one ``error: <message>`` line on stderr and give 2."""
    try:
        text = action()
    except CarvanaError as error:
        return print_error(error)
    if text is not None:
        print(text)
    return 0


def check_fraction(name: str, value: float) -> None:
    """``value`` must lie in [0, 1] (NaN does not); ``name`` is the setting the message names."""
    if not 0.0 <= value <= 1.0:
        raise CarvanaError(f"{name} must be in [0, 1], got {value}")


def check_workers(workers: int) -> None:
    """A process count: >= 0, where 0 means one per CPU."""
    if workers < 0:
        raise CarvanaError(f"workers must be >= 0 (0 = one per CPU), got {workers}")


def check_folder(path: str | os.PathLike, what: str = "folder") -> None:
    """``path`` must be an existing folder; ``what`` names it in the message, e.g. "prediction folder"."""
    if not Path(path).is_dir():
        raise CarvanaError(f"{what} {path} does not exist")


def check_files(paths: list[list[Path]], what: str) -> list[list[Path]]:
    """Every path must be a file; one error names the first missing and the count. Returns ``paths``."""
    missing = [path for group in paths for path in group if not path.is_file()]
    if missing:
        raise CarvanaError(f"{missing[0]}: no {what}; {len(missing)} missing")
    return paths


def _size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def check_shape(
    image_id: str, path: str | os.PathLike, shape: Sequence[int], expected: Sequence[int], reference: str
) -> None:
    """The (H, W, ...) ``shape`` of ``image_id``'s array read from ``path`` must start with ``expected``;
    ``reference`` says where that size comes from, e.g. "the size of its mask <path>"."""
    if tuple(shape[:2]) != tuple(expected[:2]):
        raise CarvanaError(f"{image_id}: {path} is {_size(shape)}, expected {_size(expected)} ({reference})")


def normalised_weights(
    weights: Sequence[float] | None, count: int, what: str = "input folders"
) -> tuple[float, ...]:
    """``count`` finite weights >= 0 (None: equal ones) scaled to sum 1; ``what`` names the inputs."""
    if weights is None:
        return (1.0 / count,) * count
    weights = list(weights)
    if len(weights) != count:
        raise CarvanaError(f"{len(weights)} weights for {count} {what}")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise CarvanaError(f"the weights of the {what} must be finite and >= 0, got {weights}")
    total = math.fsum(weights)
    if total == 0:
        raise CarvanaError(f"the weights of the {what} are all zero")
    return tuple(w / total for w in weights)
