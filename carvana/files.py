"""Files written whole or not at all: a reader never sees half a file, even after a crash or a kill.

Every writer of the project goes through ``atomic_path``: the data lands under a temporary name beside the
target (``.<name>.<random>.tmp``) and is renamed into place only once complete.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def temp_files(folder: str | Path, name_glob: str = "*") -> list[Path]:
    """The temporary files a killed writer left in ``folder`` for targets matching ``name_glob``."""
    return sorted(Path(folder).glob(f".{name_glob}.*{TEMP_SUFFIX}"))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends normally,
    removed when it raises. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through ``atomic_path``.

    Opened with "xb" under a random name rather than mkstemp, so the file gets the umask's permissions
    instead of 0600: run and prediction folders are read by other users and containers.
    """
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


def link_or_copy(src: Path, dst: Path) -> Path:
    """Hard link ``src`` at ``dst`` (a copy across file systems), through ``atomic_path``."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A small CSV (``folds.csv``, caches, reports) written whole."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, out.getvalue())
