"""Progress where stdout is not a terminal (a SLURM log): plain lines with counts and ETAs, one per epoch for
training; and worker pools sized to the CPUs this process may use."""

import io
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from carvana.errors import CarvanaError
from carvana.progress import Lines, duration, track
from carvana.workers import available_cpus
from tests.conftest import REPO
from tests.runs import train


def test_track_passes_items_through_with_a_first_and_a_last_line(capsys):
    assert list(track(iter(range(50)), 50, "things")) == list(range(50))
    captured = capsys.readouterr()  # capsys is no terminal
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert re.fullmatch(r"things: 1/50 \(2%\), \d+s, ETA \d+s", lines[0]), lines
    assert re.fullmatch(r"things: 50/50 \(100%\), \d+s", lines[-1]), lines
    assert len(lines) == 2  # under a second: the 10% steps are not worth a line each


def test_lines_count_and_estimate():
    stream = io.StringIO()
    lines = Lines(4, "maps", stream, seconds=0)  # a line after every advance
    for _ in range(3):
        lines.advance()
    lines.advance()
    assert [re.sub(r"\d+s", "Ns", line) for line in stream.getvalue().splitlines()] == [
        "maps: 1/4 (25%), Ns, ETA Ns",
        "maps: 2/4 (50%), Ns, ETA Ns",
        "maps: 3/4 (75%), Ns, ETA Ns",
        "maps: 4/4 (100%), Ns",
    ]
    assert lines.line(100.0) == "maps: 4/4 (100%), 1m40s"
    assert [duration(s) for s in (4.4, 211, 7500)] == ["4s", "3m31s", "2h05m"]


def test_ensemble_prints_progress_lines_through_a_pipe(tmp_path):
    rng = np.random.default_rng(0)
    folders = []
    for k in range(2):
        folder = tmp_path / f"model{k}"
        folder.mkdir()
        for angle in range(1, 7):
            prob = rng.integers(0, 256, (48, 64), np.uint8)
            assert cv2.imwrite(str(folder / f"0a1b2c3d4e5f_{angle:02d}.png"), prob)
        (folder / "manifest.json").write_text(json.dumps({"model": k}))
        folders.append(folder)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "carvana", "ensemble", str(out), *map(str, folders), "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}: ensemble of 2 folders written\n"
    lines = done.stderr.splitlines()
    assert re.fullmatch(rf"ensemble {re.escape(str(out))}: 1/6 \(16%\), \d+s, ETA \d+s", lines[0]), lines
    assert re.fullmatch(rf"ensemble {re.escape(str(out))}: 6/6 \(100%\), \d+s", lines[-1]), lines


def test_training_in_a_log_prints_one_line_per_epoch(tmp_path):
    done = train(tmp_path, "model=linknet18", "trainer.max_epochs=2", "logger=none")
    assert done.returncode == 0, done.stderr[-3000:]
    epoch = r"8 steps, train/loss \d\.\d{4}, val/dice \d\.\d{4}, \d+s"
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, done.stdout
    assert re.fullmatch(rf"epoch 1/2: {epoch}, ETA \d+s", epochs[0]), epochs
    assert re.fullmatch(rf"epoch 2/2: {epoch}", epochs[1]), epochs
    oof = re.escape(str(tmp_path / "outputs" / "linknet18" / "fold0" / "oof"))
    assert re.search(rf"^predicting {oof}, batches: 2/2 \(100%\), \d+s$", done.stdout, re.MULTILINE)
    assert re.search(rf"^scoring {oof}: 16/16 \(100%\), \d+s$", done.stderr, re.MULTILINE)
    assert "it/s" not in done.stdout + done.stderr  # no frame of the Rich bars, which a log shows wrapped


def cpus(setup: str, **env: str) -> str:
    """What ``available_cpus`` says in a fresh process after ``setup`` (code) with ``env`` set."""
    script = f"import os\n{setup}\nfrom carvana.workers import available_cpus\nprint(available_cpus())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_available_cpus_respect_the_affinity_mask_and_slurm(monkeypatch):
    assert cpus("os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})") == "1"
    assert cpus("", SLURM_CPUS_PER_TASK="1") == "1"
    assert cpus("", SLURM_CPUS_PER_TASK="4096") == str(len(os.sched_getaffinity(0)))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "two")
    with pytest.raises(CarvanaError, match="SLURM_CPUS_PER_TASK='two': not a CPU count"):
        available_cpus()
