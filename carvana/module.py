"""The training LightningModule: any smp-style network, loss on logits, the competition metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.functional.classification import binary_f1_score

from carvana.errors import CarvanaError
from carvana.geometry import Geometry

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]  # (optimizer, **run-length kwargs)


class NetworkInput(nn.Module):
    """float NCHW from a uint8 NHWC batch, on the batch's device: the image channels standardised with
    ``mean``/``std`` (0..1 scale, as the configs give them), further channels (the second level's
    probability maps) scaled to [0, 1].

    One float copy of the batch, then a single fused multiply-add in place, ``x * (1/std) - mean/std``
    (equal to ``(x - mean) / std`` to float rounding): each pass over a full-resolution batch moves 29 MB an
    image, and with the plain out-of-place arithmetic CPU prediction ran at 0.84 of its bare forward passes,
    with this at 0.92 (bench/results.md).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # Not in the state dict: the values come from the run's config, so checkpoints stay loadable.
        scale = 1 / (torch.tensor(std, dtype=torch.float64) * 255)
        shift = -torch.tensor(mean, dtype=torch.float64) * 255 * scale
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32, copy=True)
        scale, shift = self.scale, self.shift
        extra = x.shape[1] - scale.shape[1]
        if extra > 0:
            scale = torch.cat([scale, scale.new_full((1, extra, 1, 1), 1 / 255)], dim=1)
            shift = torch.cat([shift, shift.new_zeros((1, extra, 1, 1))], dim=1)
        return torch.addcmul(shift, x, scale, out=x)


def per_image_dice(probs: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice of every image in a batch, 1 when prediction and truth are both empty (Kaggle's rule)."""
    return binary_f1_score(
        probs.flatten(1),
        target.flatten(1),
        threshold=threshold,
        multidim_average="samplewise",
        zero_division=1,
    )


class SegmentationModule(pl.LightningModule):
    """Binary car masks. Batches arrive as uint8 NHWC and are normalised here, on the device.

    ``val/dice`` is the mean per-image Dice at each image's original resolution: the network output is
    restored (padding cropped, resizing undone) before it is compared with the untouched mask.

    The scheduler steps every epoch, or every optimizer step with ``scheduler_interval="step"`` (OneCycleLR).
    A scheduler configured with ``total_steps=None`` gets the run's number of optimizer steps, which only the
    trainer knows.
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

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, H, W) of a uint8 (N, H, W, C) batch on the network's grid."""
        return self.net(self.network_input(image))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"].float())
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(batch["mask"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        target = batch["mask"]
        logits = self.geometry.restore(self(batch["image"]), *target.shape[-2:])
        loss = self.loss(logits, target.float())
        probs = logits.sigmoid()
        self.val_dice.update(per_image_dice(probs, target, self.threshold))
        self.log("val/loss", loss, sync_dist=True, batch_size=len(target))
        self.log("val/dice", self.val_dice, prog_bar=True)
        return {"loss": loss, "probs": probs}

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
