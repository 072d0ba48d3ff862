"""Losses on logits, built from segmentation_models_pytorch's own."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss
from torch import nn


class BceDice(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``: 1/1 as the 1st place, 0.2/0.8 as 80TFlops."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.bce = SoftBCEWithLogitsLoss()
        self.dice = DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)
