"""``fold_score.json``: the fold's best validation score, rewritten on every improvement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from carvana.io import atomic_write_text


class FoldScore(pl.Callback):
    """Keeps the best ``monitor`` (higher is better) and its epoch; survives resume through its state."""

    def __init__(self, path: str, fold: int, monitor: str = "val/dice"):
        self.path, self.fold, self.monitor = Path(path), fold, monitor
        self.best: float | None = None
        self.epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or (self.best is not None and value <= self.best):
            return
        self.best, self.epoch = float(value), trainer.current_epoch
        if trainer.is_global_zero:
            record = {"fold": self.fold, "monitor": self.monitor, "best": self.best, "epoch": self.epoch}
            atomic_write_text(self.path, json.dumps(record, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epoch = state_dict["best"], state_dict["epoch"]
