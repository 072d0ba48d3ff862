"""Running the entry points the way a user does: a subprocess in the repository, tiny CPU-sized overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "trainer=cpu",
    "model.encoder_weights=null",
    "trainer.max_epochs=1",
    "data.synthetic.cars=5",
    "data.synthetic.test_cars=1",
    "data.synthetic.width=100",  # not a multiple of 32: padding is exercised and undone
    "data.synthetic.height=70",
    "data.batch_size=8",
    "data.num_workers=0",
]


def train(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python train.py`` with outputs and the synthetic cache under ``tmp_path``."""
    flags = [arg for arg in overrides if arg.startswith("-")]  # Hydra reads flags before the overrides
    overrides = tuple(arg for arg in overrides if not arg.startswith("-"))
    command = [
        sys.executable,
        "train.py",
        *flags,
        f"paths.output_root={tmp_path / 'outputs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY,
        *overrides,
    ]
    environ = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environ, timeout=600)
