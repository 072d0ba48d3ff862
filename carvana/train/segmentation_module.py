"""The training LightningModule: any smp-style network, loss on logits, the competition metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from carvana.data.geometry import Geometry
from carvana.errors import CarvanaError
from carvana.metrics import per_image_dice
from carvana.models import NetworkInput

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]  # (optimizer, **run-length kwargs)


class SegmentationModule(pl.LightningModule):
    """Binary car masks. Batches arrive as uint8 NHWC and are normalised here, on the device.

    ``val/dice`` is the mean per-image Dice at each image's original resolution: the network output is
    restored (padding cropped, resizing undone) before it is compared with the untouched mask.

    The scheduler steps every epoch, or every optimizer step with ``scheduler_interval="step"`` (OneCycleLR).
    A scheduler configured with ``total_steps=None`` gets the run's number of optimizer steps, which only the
    trainer knows.

    Args:
        net: the network, logits (N, 1, H, W) of float NCHW input (``conf/model``).
        loss: on logits and the float mask (``conf/loss``).
        optimizer: a partial of a ``torch.optim`` class, called with the parameters (``conf/optimizer``).
        geometry: the data module's, to restore outputs to the original pixels.
        mean: per-channel input mean on the 0..1 scale (ImageNet's for pretrained encoders).
        std: per-channel input standard deviation, likewise.
        scheduler: a partial of a scheduler class, called with the optimizer; None keeps the LR fixed.
        threshold: mask = probability > threshold, for ``val/dice``.
        scheduler_interval: ``epoch`` or ``step``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        geometry: Geometry,
        mean: Sequence[float],
        std: Sequence[float],
        scheduler: SchedulerFactory | None = None,
        threshold: float = 0.5,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
    ):
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.geometry, self.threshold = geometry, threshold
        self.network_input = NetworkInput(mean, std)
        self.val_dice = MeanMetric()

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, H, W) of a uint8 (N, H, W, C) batch on the network's grid."""
        return self.net(self.network_input(image))

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"].float())
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(batch["mask"]))
        return loss

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        target = batch["mask"]
        logits = self.geometry.restore(self(batch["image"]), *target.shape[-2:])
        loss = self.loss(logits, target.float())
        probs = logits.sigmoid()
        self.val_dice.update(per_image_dice(probs, target, self.threshold))
        self.log("val/loss", loss, sync_dist=True, batch_size=len(target))
        self.log("val/dice", self.val_dice, prog_bar=True)
        return {"loss": loss, "probs": probs}

    @override
    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, **self._run_length())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": "val/dice",
                "interval": self.scheduler_interval,
            },
        }

    def _run_length(self) -> dict[str, int]:
        """``total_steps`` for a scheduler factory that leaves it None, else nothing."""
        keywords = getattr(self.scheduler_factory, "keywords", {})
        if "total_steps" not in keywords or keywords["total_steps"] is not None:
            return {}
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise CarvanaError("scheduler.total_steps=null needs a finite run: set trainer.max_epochs")
        return {"total_steps": int(steps)}
