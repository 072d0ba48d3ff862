"""Run a command of the project with a fault injected at an exact point: the N-th call of one function.

    python tests/kill_switch.py MODULE:QUALNAME N ACTION -- train.py fold=0 ...
    python tests/kill_switch.py MODULE:QUALNAME N ACTION -- -m carvana oof RUN

ACTION is ``KILL`` (SIGKILL to the whole process group, DataLoader workers included: start the command in
a session of its own), another signal name sent to this process (``USR1``, ``TERM``), or ``nan`` (the call
returns its result times NaN). The wrapped function runs before a KILL or a signal, so "after the N-th call"
is where the fault lands. A harness, not a mock: the command is the real one, run in this process.
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Tiny tensors on a shared 2-core CPU: a second OpenMP thread only waits (about 3x slower end to end).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(
    args: list[str], fault: tuple[str, int, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``args`` (``train.py ...``, ``-m carvana ...``) in the repository as a user runs them, in a session of
    its own; ``fault`` = (MODULE:QUALNAME, N, ACTION) injected after that function's N-th call."""
    harness = [__file__, fault[0], str(fault[1]), fault[2], "--"] if fault else []
    return subprocess.run(
        [sys.executable, *harness, *args],
        cwd=REPO, capture_output=True, text=True, env=ENV, timeout=timeout, start_new_session=True,
    )  # fmt: skip


def inject(target: str, calls: int, action: str) -> None:
    module_name, qualname = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    count = 0

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        nonlocal count
        result = original(*args, **kwargs)
        count += 1
        if count == calls:
            if action == "nan":
                return result * float("nan")
            if action == "KILL":
                os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), getattr(signal, f"SIG{action}"))
        return result

    setattr(owner, name, wrapped)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    target, calls, action = argv[:split]
    command = argv[split + 1 :]
    inject(target, int(calls), action)
    if command[0] == "-m":
        sys.argv = command[1:]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
