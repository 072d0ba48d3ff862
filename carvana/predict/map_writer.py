"""The prediction writer: each batch's maps written into a prediction folder from a few threads.

A folder is resumable: an image whose map exists (and is newer than the checkpoints) is never predicted
again, and ``manifest.json`` appears only once every image has its map (``carvana.runs``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from typing_extensions import override

from carvana import runs
from carvana.files import temp_files

log = logging.getLogger(__name__)


class MapWriter(BasePredictionWriter):
    """Writes each batch's uint8 maps from a few threads, so the accelerator never waits on the encoder.

    At most ``max_pending`` maps wait in memory; the pool is drained at the end of predict (then all ranks
    meet, so every file exists when ``trainer.predict`` returns) and on an exception. Each file is logged
    at DEBUG level as ``rank R wrote ID`` (``hydra.verbose=carvana.predict.map_writer``), which proves DDP
    runs write every image once.

    Args:
        out_dir: the prediction folder.
        threads: encoding threads (zstd and zlib release the GIL).
        max_pending: maps handed over but not yet written, at most; bounds the memory they hold.
        fmt: the map format (``carvana.runs.MAP_FORMATS``); a folder already holding maps is continued in
            theirs (``carvana.runs.writing_format``).
    """

    def __init__(
        self, out_dir: str | Path, threads: int = 2, max_pending: int = 8, fmt: str = runs.MAP_FORMAT
    ):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.format = runs.writing_format(self.out_dir, fmt)
        self.threads, self.max_pending = threads, max_pending
        self._pool: ThreadPoolExecutor | None = None
        self._futures: deque[Future] = deque()
        self._rank = 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Also removes the temp files of a killed run; ranks meet after setup, before any rank writes."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            for tmp in temp_files(self.out_dir, f"*{runs.map_suffix(self.format)}"):
                tmp.unlink(missing_ok=True)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="map-writer")
        self._rank = trainer.global_rank

    def _write(self, image_id: str, prob: np.ndarray) -> None:
        runs.write_map(self.out_dir, image_id, prob, self.format)
        log.debug("rank %d wrote %s", self._rank, image_id)

    @override
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

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drain()
        trainer.strategy.barrier("map_writer")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Let the maps already handed over finish (each file is whole or absent either way)."""
        futures, self._futures = self._futures, deque()
        for future in futures:
            if future.exception() is not None:
                log.warning("writing a map failed too: %s", future.exception())
        self._shutdown()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
