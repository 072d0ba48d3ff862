"""Prediction folders: one 8-bit ``<image_id>.png`` per image, written whole, and the ``manifest.json``.

A folder is resumable: an image whose PNG exists (and is newer than the checkpoints) is never predicted
again, and ``manifest.json`` appears only once every image has its PNG, as ``carvana.ensemble`` expects.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from carvana.dataset import Sample
from carvana.ensemble import MANIFEST
from carvana.errors import CarvanaError
from carvana.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# The manifest entries that decide the maps: a folder whose maps were made otherwise is never continued.
IDENTITY = ("checkpoints", "weights", "tta", "geometry")


def pending(samples: Sequence[Sample], out_dir: str | Path, since: float = 0.0) -> list[Sample]:
    """The samples without a PNG in ``out_dir`` modified at or after ``since`` (a POSIX time).

    ``since`` is the newest checkpoint's mtime: a map older than its model is stale and is predicted again.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return list(samples)
    done = {
        entry.name
        for entry in os.scandir(out_dir)
        if entry.name.endswith(".png") and entry.stat().st_mtime >= since
    }
    return [sample for sample in samples if f"{sample.image_id}.png" not in done]


def read_manifest(out_dir: str | Path) -> dict | None:
    """The folder's manifest, or None when it has none (an unfinished or a new folder)."""
    try:
        return json.loads((Path(out_dir) / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CarvanaError(f"{Path(out_dir) / MANIFEST}: unreadable ({error})") from None


def made_otherwise(out_dir: str | Path, manifest: dict) -> bool:
    """Whether ``out_dir`` holds finished maps made with other checkpoints, weights, TTA or geometry."""
    old = read_manifest(out_dir)
    return old is not None and any(old.get(key) != manifest[key] for key in IDENTITY)


def write_manifest(out_dir: str | Path, samples: Sequence[Sample], manifest: dict) -> bool:
    """Write ``manifest`` (plus the image count) if every sample has its PNG; False when some are missing."""
    missing = pending(samples, out_dir)
    if missing:
        log.warning(
            "%s: %d of %d images have no PNG yet; rerun to finish them", out_dir, len(missing), len(samples)
        )
        return False
    atomic_write_text(
        Path(out_dir) / MANIFEST, json.dumps({**manifest, "images": len(samples)}, indent=2) + "\n"
    )
    return True


class PngWriter(BasePredictionWriter):
    """Writes each batch's uint8 maps as PNGs from a few threads, so the accelerator never waits on zlib.

    At most ``max_pending`` maps wait in memory; the pool is drained at the end of predict (then all ranks
    meet, so every file exists when ``trainer.predict`` returns) and on an exception. Each file is logged
    at DEBUG level as ``rank R wrote ID`` (``hydra.verbose=carvana.writer``), which proves DDP runs write
    every image once.
    """

    def __init__(self, out_dir: str | Path, threads: int = 2, max_pending: int = 8):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.threads, self.max_pending = threads, max_pending
        self._pool: ThreadPoolExecutor | None = None
        self._futures: deque[Future] = deque()
        self._rank = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Also removes the temp files of a killed run; ranks meet after setup, before any rank writes."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            for tmp in self.out_dir.glob(".*.png.*.tmp"):
                tmp.unlink(missing_ok=True)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="png-writer")
        self._rank = trainer.global_rank

    def _write(self, image_id: str, prob: np.ndarray) -> None:
        ok, png = cv2.imencode(".png", prob)  # OpenCV's default level-1 Z_RLE: fast and small for masks
        if not ok:
            raise CarvanaError(f"{image_id}: PNG encoding failed")
        atomic_write_bytes(self.out_dir / f"{image_id}.png", png.tobytes())
        log.debug("rank %d wrote %s", self._rank, image_id)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self._pool is not None, "setup did not run"
        for image_id, prob in zip(prediction["id"], prediction["prob"], strict=True):
            self._futures.append(self._pool.submit(self._write, image_id, prob.cpu().numpy()))
            while len(self._futures) > self.max_pending:
                self._futures.popleft().result()

    def _drain(self) -> None:
        while self._futures:
            self._futures.popleft().result()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drain()
        trainer.strategy.barrier("png_writer")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Let the maps already handed over finish (each file is whole or absent either way)."""
        futures, self._futures = self._futures, deque()
        for future in futures:
            if future.exception() is not None:
                log.warning("writing a PNG failed too: %s", future.exception())
        self._shutdown()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
