"""One plain line per epoch where stdout is not a terminal (a SLURM log, nohup.out), in place of the bar.

There the Rich bar prints nothing until its last frame at exit, wrapped over several lines, so a ten-minute
epoch leaves the log silent; this callback switches the bar off and prints
``epoch 2/3: 203 steps, train/loss 0.1234, val/dice 0.9754, 3m31s, ETA 3m40s`` instead.
"""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
from typing_extensions import override

from carvana.progress import duration, is_terminal

LOSS = "train/loss"
SCORE = "val/dice"


class EpochLines(pl.Callback):
    """Where stdout is not a terminal, one flushed line at the end of every training epoch (global rank 0):
    its optimizer steps, the epoch's mean ``train/loss``, the ``val/dice`` of its validation (absent in an
    epoch without one), its time and, where ``max_epochs`` bounds the run, the ETA of the epochs left."""

    def __init__(self) -> None:
        self.active = False
        self._fit_start = self._epoch_start = 0.0
        self._epochs = self._epoch_step = 0
        self._score: float | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.active = stage == "fit" and not is_terminal(sys.stdout)
        if self.active and trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.disable()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start, self._epochs = time.monotonic(), 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._epoch_step, self._score = time.monotonic(), trainer.global_step, None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(SCORE)
        if not trainer.sanity_checking and score is not None:
            self._score = float(score)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called after the epoch's validation, with the epoch's mean loss already logged."""
        self._epochs += 1
        if self.active and trainer.is_global_zero:
            print(self.line(trainer, time.monotonic()), flush=True)

    def line(self, trainer: pl.Trainer, now: float) -> str:
        """``epoch E/N: S steps, train/loss L, val/dice D, time, ETA t`` of the epoch just ended."""
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        parts = [f"{trainer.global_step - self._epoch_step} steps"]
        metrics = trainer.callback_metrics
        loss = metrics.get(f"{LOSS}_epoch", metrics.get(LOSS))
        if loss is not None:
            parts.append(f"{LOSS} {float(loss):.4f}")
        if self._score is not None:
            parts.append(f"{SCORE} {self._score:.4f}")
        parts.append(duration(now - self._epoch_start))
        if last is not None and epoch < last:
            per_epoch = (now - self._fit_start) / self._epochs
            parts.append(f"ETA {duration(per_epoch * (last - epoch))}")
        return f"epoch {epoch}{f'/{last}' if last else ''}: {', '.join(parts)}"
