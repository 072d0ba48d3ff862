"""Writing files whole or not at all: a reader never sees half a file, even after a crash."""

from __future__ import annotations

import ctypes
import functools
import os
import secrets
from pathlib import Path

# glibc's mallopt parameters; values as in <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    Opened with "xb" under a random name rather than mkstemp, so the file gets the umask's permissions
    instead of 0600: run and prediction folders are read by other users and containers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


@functools.cache
def reuse_freed_buffers() -> bool:
    """Make glibc's malloc keep freed image-sized buffers for the next sample instead of unmapping them.

    Every sample decodes, pads and flips 7 MB buffers. By default glibc maps such a buffer fresh and unmaps it
    when freed, so the next one is faulted in again page by page: on a 2-core VM that was half the time of a
    1918x1280 training sample beyond the decodes (bench/results.md, loading). Up to 32 MB (glibc's limit, a
    float32 3x1280x1920 image is 29.5 MB) now comes from the heap, and the heap returns memory to the system
    only once 512 MB are free at its top. Once per process; fork children (DataLoader workers, pools) inherit
    it. False where the C library has no mallopt (not glibc): nothing changes there.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 512 << 20))
