"""A diverged run stops at the first non-finite loss, before it reaches the weights."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from typing_extensions import override

from carvana.errors import CarvanaError


class FiniteLoss(pl.Callback):
    """Stop training with one line naming the step and epoch when the loss is NaN or infinite.

    It checks before the backward pass, so the weights and the optimizer state stay those of the last good
    step: the last checkpoint stays the resume point, and ``best.ckpt``, saved only at validation, is never
    overwritten by a diverged network. Lower the learning rate or clip gradients
    (``trainer.gradient_clip_val``), then rerun the same command.
    """

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        value = float(loss.detach())
        # every DDP rank stops together, or the others would wait for it forever
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            raise CarvanaError(
                f"train/loss is {value} at step {trainer.global_step}, epoch {trainer.current_epoch}: "
                "training stopped before the update; the last checkpoint is the resume point (lower "
                "optimizer.lr or set trainer.gradient_clip_val, then rerun the same command)"
            )
