"""User-facing errors: the entry points print these as one line and exit non-zero, with no traceback.

``report`` runs a command-line action that way; the ``check_*`` helpers are the argument checks the stages
share, each raising a ``CarvanaError``. Kept free of heavy imports: ``python -m carvana.ensemble --help``
starts in a fraction of a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


class CarvanaError(Exception):
    """Bad input or setting; the message names the file or setting at fault and how to fix it."""


def print_error(error: CarvanaError) -> int:
    """Print ``error: <message>`` on stderr; returns the exit status for bad input, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def report(action: Callable[[], str | None]) -> int:
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
