"""``heartbeat.json``: a running fit or prediction rewrites a small record every few seconds, so that
``carvana status`` tells a process still at work from one that died (a kill leaves no other trace)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from carvana import runs


class Heartbeat(pl.Callback):
    """Writes ``path`` when a fit or prediction starts, after a batch once ``every_seconds`` have passed
    since the last write, at every epoch end, and once more when it ends: state ``finished``, or
    ``stopped`` with the error (an exception, Ctrl-C, SIGTERM). A SIGKILL leaves ``running`` with a time that
    stops advancing. Each record: the state, the process (pid, host), the time, the step and the steps the
    run will take, this process's step rate; a fit also its epochs done and ``max_epochs``. Global rank 0
    writes it, whole (``carvana.runs.write_json``).

    Args:
        path: the run's (or prediction folder's) ``heartbeat.json``.
        every_seconds: the longest gap between writes while batches run.
        info: entries recorded as they are (prediction: the image count and the checkpoints).
    """

    def __init__(self, path: str | Path, every_seconds: float = 30.0, info: Mapping[str, Any] | None = None):
        self.path, self.every_seconds, self.info = Path(path), float(every_seconds), dict(info or {})
        self._stage = ""
        self._total: int | None = None
        self._predicted = 0
        self._start: tuple[float, int] | None = None  # (monotonic time, step) when the loop started
        self._last = -math.inf

    def _step(self, trainer: pl.Trainer) -> int:
        return self._predicted if self._stage == "predict" else trainer.global_step

    def _write(self, trainer: pl.Trainer, state: str = "running", error: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        now, step = time.monotonic(), self._step(trainer)
        rate = None
        if self._start is not None and now > self._start[0] and step > self._start[1]:
            rate = (step - self._start[1]) / (now - self._start[0])
        record: dict[str, Any] = {
            "stage": self._stage,
            "state": state,
            **runs.this_process(),
            "time": time.time(),
            "every_seconds": self.every_seconds,
            "step": step,
            "total_steps": self._total,
            "steps_per_second": rate,
        }
        if self._stage == "fit":
            record["epochs_done"] = trainer.fit_loop.epoch_progress.current.processed
            record["max_epochs"] = trainer.max_epochs
        if error is not None:
            record["error"] = error
        runs.write_json(self.path, {**record, **self.info})
        self._last = now

    def _tick(self, trainer: pl.Trainer) -> None:
        if time.monotonic() - self._last >= self.every_seconds:
            self._write(trainer)

    def _started(self, trainer: pl.Trainer, total: float) -> None:
        self._total = int(total) if math.isfinite(total) else None  # max_epochs=-1: no end to estimate
        self._start = (time.monotonic(), self._step(trainer))
        self._write(trainer)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The first beat, before data loading and the sanity check: this process has the folder now."""
        self._stage, self._total, self._predicted, self._start = stage, None, 0, None
        if stage in ("fit", "predict"):
            self._write(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started(trainer, trainer.estimated_stepping_batches)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started(trainer, sum(trainer.num_predict_batches))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._tick(trainer)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._stage == "fit":
            self._tick(trainer)

    @override
    def on_predict_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._predicted += 1
        self._tick(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "finished")

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "finished")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._stage in ("fit", "predict"):
            lines = str(exception).strip().splitlines()
            self._write(trainer, "stopped", type(exception).__name__ + (f": {lines[0]}" if lines else ""))
