"""Schedules over the run's budget: the fraction of ``trainer.max_time`` spent (else of the planned steps).

A wall-time budget makes a recipe fit what the machine can do in that time: the same config gives a full
warm-up and decay on 2 CPU cores and on a GPU, where an epoch count would have to be re-tuned for each.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer
from typing_extensions import override

from carvana.errors import CarvanaError


def budget_fraction(trainer: pl.Trainer) -> float:
    """How much of the run is done, in [0, 1]: the share of ``trainer.max_time`` elapsed (the Timer's clock,
    which a resume restores), or without one the share of the planned optimizer steps."""
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if timer is not None and remaining is not None:
        elapsed = timer.time_elapsed()
        return min(1.0, elapsed / max(elapsed + remaining, 1e-9))
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps):
        raise CarvanaError("a budget schedule needs trainer.max_time or a finite trainer.max_epochs")
    return min(1.0, trainer.global_step / max(steps, 1))


class WarmupCosineLR(Callback):
    """Linear warm-up over the first ``warmup`` of the budget, then cosine decay to ``final`` times the
    configured LR, set before every batch from ``budget_fraction``.

    The configured LR is kept as each parameter group's ``initial_lr`` (as torch schedulers keep it), which
    the optimizer state saves, so a resumed run continues the same curve. Use with ``scheduler=none``.

    Args:
        warmup: share of the budget spent ramping up from 0 (0 disables the warm-up).
        final: the LR factor at the end of the budget.
    """

    def __init__(self, warmup: float = 0.02, final: float = 0.0):
        if not 0 <= warmup < 1:
            raise CarvanaError(f"warmup={warmup}: must be in [0, 1)")
        self.warmup, self.final = warmup, final

    def factor(self, fraction: float) -> float:
        """The LR multiplier at ``fraction`` of the budget."""
        if fraction < self.warmup:
            return (fraction + 1e-3) / self.warmup
        progress = (fraction - self.warmup) / (1 - self.warmup)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        factor = self.factor(budget_fraction(trainer))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor
