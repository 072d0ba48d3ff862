"""How a process's allocator treats image-sized buffers: reused in the processes that decode samples, mapped
on their own in the one that predicts for hours (glibc only; elsewhere nothing changes)."""

from __future__ import annotations

import ctypes
import functools
import os

# glibc's mallopt parameters; values as in <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None: nothing changes there."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_unmapping_pid: int | None = None  # the process that chose unmap_large_buffers, if any


def reuse_freed_buffers() -> bool:
    """Make glibc's malloc keep freed image-sized buffers for the next sample instead of unmapping them.

    Every sample decodes, pads and flips buffers of 2-7 MB. By default glibc maps each such buffer fresh and
    unmaps it on free, so the next sample faults it in again, page by page: on a shared 2-core VM OpenCV's
    JPEG decode took twice as long that way, and a 1918x1280 training pair 14.3 instead of 11.4 ms. With
    this, allocations up to 32 MB (glibc's maximum) come from the heap, which gives memory back once 64 MB
    are free at its top. The price is a fragmented heap that holds more than it uses, which a decoding
    process can afford; so the process that decodes samples calls it (``CarvanaDataset.__getitem__``, in
    the DataLoader workers), and it does nothing in a process that chose ``unmap_large_buffers``.
    """
    libc = _glibc()
    if libc is None or _unmapping_pid == os.getpid():
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20))


def unmap_large_buffers() -> bool:
    """Make glibc's malloc map every buffer over 1 MB on its own and unmap it when freed, in this process.

    For the predicting process, which lives for the whole test set: by default glibc raises its mmap
    threshold after the first large free, the batches' tensors then come from the heap and fragment it, and
    the peak memory grew with the number of images (14% more for 500 than for 50 in the prediction benchmark).
    With a fixed threshold both peak alike, and prediction still runs at 0.92 of its bare forward passes
    (bench/results.md). DataLoader workers forked later still reuse their buffers (``reuse_freed_buffers``),
    and this process keeps the setting even when it decodes.
    """
    global _unmapping_pid
    libc = _glibc()
    if libc is None:
        return False
    _unmapping_pid = os.getpid()
    # glibc's default trim threshold, in case this process raised it; then hand back what the heap holds.
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10))
    libc.malloc_trim(0)
    return done
