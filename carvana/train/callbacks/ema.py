"""An exponential moving average of the weights, validated and checkpointed in their place."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

from carvana.errors import CarvanaError
from carvana.train.callbacks.budget import budget_fraction


class EMA(WeightAveraging):
    """Lightning's ``WeightAveraging`` with torch's EMA update: ``avg = decay * avg + (1 - decay) * w`` after
    every optimizer step once ``start`` of the budget (``budget_fraction``) is spent, batch-norm statistics
    included. Validation, ``best.ckpt`` and so the OOF pass and ``predict.py`` see the averaged weights;
    ``last.ckpt`` also keeps the raw ones, so a resume continues training them.

    Args:
        decay: the average's memory, about 1 / (1 - decay) steps.
        start: share of the budget before averaging begins (the first, fast-moving steps are not worth
            remembering).
    """

    def __init__(self, decay: float = 0.999, start: float = 0.0):
        if not 0 < decay < 1:
            raise CarvanaError(f"callbacks.ema.decay={decay}: must be in (0, 1)")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.start = start
        self._trainer: pl.Trainer | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        super().setup(trainer, pl_module, stage)

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None
            and self._trainer is not None
            and budget_fraction(self._trainer) >= self.start
        )
