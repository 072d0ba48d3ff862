"""W&B extras for validation: ``val/dice`` summarised by its max, and mask overlays every epoch."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from typing_extensions import override

CLASS_LABELS = {1: "car"}


def _wandb(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class WandbValidation(pl.Callback):
    """Logs the first ``num_images`` validation images with predicted and true masks; no-op without W&B.

    Args:
        num_images: images of the first validation batch to log each epoch.
        width: their width in pixels on the dashboard (height follows the aspect ratio).
        monitor: the metric W&B summarises by its maximum.
    """

    def __init__(self, num_images: int = 4, width: int = 480, monitor: str = "val/dice"):
        self.num_images, self.width, self.monitor = num_images, width, monitor

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _wandb(trainer)
        if logger is not None and trainer.is_global_zero:
            logger.experiment.define_metric(self.monitor, summary="max")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logger = _wandb(trainer)
        if logger is None or batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        n = self.num_images
        target = batch["mask"][:n].float()
        height, width = target.shape[-2:]
        rgb = batch["image"][:n, ..., :3].permute(0, 3, 1, 2).float()  # the second level adds map channels
        image = pl_module.geometry.restore(rgb, height, width)
        size = (max(1, round(height * self.width / width)), self.width)
        image = F.interpolate(image, size=size, mode="area").round().clamp(0, 255).to(torch.uint8)
        pred = F.interpolate((outputs["probs"][:n] > pl_module.threshold).float(), size=size, mode="nearest")
        true = F.interpolate(target, size=size, mode="nearest")
        logger.log_image(
            key="val/masks",
            images=list(image.permute(0, 2, 3, 1).cpu().numpy()),
            caption=list(batch["id"][:n]),
            masks=[
                {
                    "prediction": {
                        "mask_data": p[0].to(torch.uint8).cpu().numpy(),
                        "class_labels": CLASS_LABELS,
                    },
                    "ground_truth": {
                        "mask_data": t[0].to(torch.uint8).cpu().numpy(),
                        "class_labels": CLASS_LABELS,
                    },
                }
                for p, t in zip(pred, true, strict=True)
            ],
        )
