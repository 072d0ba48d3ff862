"""Losses on logits, built from segmentation_models_pytorch's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss
from torch import nn

from carvana.errors import CarvanaError


class BceDice(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``: 1/1 as the 1st place, 0.2/0.8 as 80TFlops.

    Args:
        bce_weight: weight of smp's binary cross-entropy on logits.
        dice_weight: weight of smp's soft Dice loss.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.bce = SoftBCEWithLogitsLoss()
        self.dice = DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


def boundary_weights(target: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-pixel weights of an (N, 1, H, W) mask, largest on its edge and with mean 1 in every image.

    The local mean of the mask over a ``kernel_size`` window is 0.5 on the edge and 0 or 1 far from it, so
    ``exp(-5 |mean - 0.5|)`` is about 12 times larger on the edge than in flat regions. Pixels outside the
    image are not counted, so the image border is no edge.
    """
    local = F.avg_pool2d(target, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)
    weights = torch.exp(-5.0 * (local - 0.5).abs())
    return weights / weights.mean(dim=(-2, -1), keepdim=True)


class BoundaryBceDice(nn.Module):
    """BCE weighted up near the mask's edge, plus soft Dice: the 3rd place's (lyakaap) weighted BCE-Dice.

    Almost all of Carvana's Dice is lost in a band a few pixels wide around the car, which plain BCE, averaged
    over millions of easy background and body pixels, barely sees.

    Args:
        kernel_size: odd window of the local mask mean that finds the edge (41 pixels at full resolution).
        bce_weight: weight of the edge-weighted BCE.
        dice_weight: weight of smp's soft Dice loss.
    """

    def __init__(self, kernel_size: int = 41, bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise CarvanaError(f"loss.kernel_size={kernel_size}: must be odd and at least 3")
        self.kernel_size, self.bce_weight, self.dice_weight = kernel_size, bce_weight, dice_weight
        self.dice = DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = boundary_weights(target, self.kernel_size)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weights)
        return self.bce_weight * bce + self.dice_weight * self.dice(logits, target)
