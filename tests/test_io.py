"""Atomic writes and the allocator settings of decoding and predicting processes, checked on real glibc."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from carvana.files import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):  # fails inside the write, after the temporary file was opened
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# Whether glibc serves a 4 MB malloc with its own mapping (mallinfo2's hblks goes up) or from the heap.
# A fresh interpreter per check: the settings last for the whole process.
PROBE = textwrap.dedent(
    """
    import ctypes, os
    from carvana.data import buffers as io

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p

    def mapped():
        results = []
        for _ in range(2):  # the second: after a free has trimmed the heap to the current threshold
            before = libc.mallinfo2().hblks
            block = libc.malloc(4 << 20)
            results.append(libc.mallinfo2().hblks > before)
            libc.free(ctypes.c_void_p(block))
        return results[-1]

    io.reuse_freed_buffers()
    seen = {"decoding": mapped()}
    io.unmap_large_buffers()
    seen["predicting"] = mapped()
    io.reuse_freed_buffers()
    seen["predicting, then decoding"] = mapped()
    read, write = os.pipe()
    if os.fork() == 0:
        io.reuse_freed_buffers()
        os.write(write, b"1" if mapped() else b"0")
        os._exit(0)
    os.wait()
    seen["forked worker"] = os.read(read, 1) == b"1"
    print(seen)
    """
)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_decoders_reuse_buffers_and_the_predicting_process_unmaps_them():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=os.environ
    ).stdout
    assert eval(out) == {
        "decoding": False,
        "predicting": True,
        "predicting, then decoding": True,  # the predicting process keeps its choice when it decodes
        "forked worker": False,  # DataLoader workers forked from it still reuse their buffers
    }
