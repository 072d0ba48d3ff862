"""``fold_score.json``: the fold's best validation score, rewritten on every improvement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from carvana import runs


class FoldScore(pl.Callback):
    """Keeps the best ``monitor`` (higher is better) and its epoch; survives resume through its state.

    Args:
        path: the run's ``fold_score.json``.
        fold: the fold, recorded in the file.
        monitor: the logged metric to keep the best of.
    """

    def __init__(self, path: str, fold: int, monitor: str = "val/dice"):
        self.path, self.fold, self.monitor = Path(path), fold, monitor
        self.best: float | None = None
        self.epoch: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or (self.best is not None and value <= self.best):
            return
        self.best, self.epoch = float(value), trainer.current_epoch
        if trainer.is_global_zero:
            record = {"fold": self.fold, "monitor": self.monitor, "best": self.best, "epoch": self.epoch}
            runs.write_json(self.path, record)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epoch = state_dict["best"], state_dict["epoch"]
