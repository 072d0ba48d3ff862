"""An exponential moving average of the weights, validated and checkpointed in their place."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from typing_extensions import override

from carvana.errors import CarvanaError
from carvana.train.callbacks.budget import budget_fraction

Tensors = Sequence[torch.Tensor]


def ema_update(decay: float, warmup: bool = True) -> Callable[[Tensors, Tensors, torch.Tensor], None]:
    """An ``AveragedModel`` multi-tensor update: ``avg = d * avg + (1 - d) * w``, with ``d = decay``, or with
    warm-up ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update (timm's ``ModelEmaV3``).

    Without warm-up the first averaged weights keep ``decay ** n`` of the average: a fifth after 1,700 steps
    at 0.999, and a from-scratch network's early weights are nearly its random ones (the likely cause of
    0.516 against the recipe's 0.988 in ``bench/ema_epyc.json``). With it, they are gone within tens of
    updates. Integer buffers (batch norm's step count) take the current value.
    """

    @torch.no_grad()
    def update(averaged: Tensors, current: Tensors, updates: torch.Tensor) -> None:
        n = int(updates)
        weight = min(decay, (1 + n) / (10 + n)) if warmup else decay
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(list(averaged), list(current), 1 - weight)
        else:
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)

    return update


class EMA(WeightAveraging):
    """Lightning's ``WeightAveraging`` with an EMA update (``ema_update``) after every optimizer step once
    ``start`` of the budget (``budget_fraction``) is spent, batch-norm statistics included. Validation,
    ``best.ckpt`` and so the OOF pass and ``predict.py`` see the averaged weights; ``last.ckpt`` also keeps
    the raw ones, so a resume continues training them.

    Args:
        decay: the average's memory, about 1 / (1 - decay) steps.
        start: share of the budget before averaging begins (the first, fast-moving steps are not worth
            remembering).
        warmup: the decay grows from 0.1 to ``decay`` over the first updates (``ema_update``).
    """

    def __init__(self, decay: float = 0.999, start: float = 0.0, warmup: bool = True):
        if not 0 < decay < 1:
            raise CarvanaError(f"callbacks.ema.decay={decay}: must be in (0, 1)")
        super().__init__(multi_avg_fn=ema_update(decay, warmup))
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
