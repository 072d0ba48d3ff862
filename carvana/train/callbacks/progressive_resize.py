"""Progressive resizing: the first part of the budget on smaller inputs, where a step costs a fraction."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from carvana.errors import CarvanaError
from carvana.train.callbacks.budget import budget_fraction


class ProgressiveResize(Callback):
    """Shrink each training batch on its device to ``sizes[i]`` while ``budget_fraction`` is below
    ``until[i]``; after the last ``until``, batches train at the size the data module gives them.

    The batch is resized where it already is (GPU or CPU), after loading, so the loaders, their workers and
    any cache keep one size; images by area averaging, masks by nearest neighbour (still 0/1).

    Args:
        sizes: ``[height, width]`` per stage, each side a multiple of the network's divisor (32).
        until: the budget share at which each stage ends, increasing.
    """

    def __init__(self, sizes: Sequence[Sequence[int]], until: Sequence[float]):
        if len(sizes) != len(until) or list(until) != sorted(until):
            raise CarvanaError("callbacks.progressive_resize: one increasing `until` share per size")
        self.stages = [
            (float(end), (int(size[0]), int(size[1]))) for end, size in zip(until, sizes, strict=True)
        ]

    def size(self, fraction: float) -> tuple[int, int] | None:
        """The input size at ``fraction`` of the budget; None: the data module's own."""
        return next((size for end, size in self.stages if fraction < end), None)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        size = self.size(budget_fraction(trainer))
        if size is None or tuple(batch["image"].shape[1:3]) == size:
            return
        image = F.interpolate(batch["image"].permute(0, 3, 1, 2).float(), size=size, mode="area")
        batch["image"] = (
            image.round_().to(torch.uint8).permute(0, 2, 3, 1)
        )  # the same dict training_step gets
        batch["mask"] = F.interpolate(batch["mask"].float(), size=size, mode="nearest").to(torch.uint8)
