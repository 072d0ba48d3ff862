"""Checkpoints written whole: a kill during a save never leaves a broken file to resume from.

Lightning's own save goes through an fsspec transaction whose temporary file lies in the system's temp
folder: on a cluster that is another file system than the run folder, and the final move becomes a copy
that a kill (or SLURM's SIGKILL after its grace period) can cut half-way. This writes beside the target and
renames (``carvana.files.atomic_path``), after an fsync, so the old file stays until the new one is whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO
from typing_extensions import override

from carvana.files import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on any local or network file system."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
