"""The 3rd place's (lyakaap) dilated U-Net: a U-Net whose bottleneck widens its view by dilation.

At Carvana's full resolution a three-stage U-Net sees too little context at its bottleneck to tell a car's
shadow or a dark window from the background; a cascade of 3x3 convolutions with dilations 1, 2, 4, ..., 32
sees 127 bottleneck pixels (about 1000 input pixels) across without further downsampling, and summing every
level's output keeps the fine levels' detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from carvana.models.unet import UNet, conv


class DilatedCascade(nn.Module):
    """3x3 convolutions applied one after another with growing dilations; their outputs are summed."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int], batch_norm: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * (len(dilations) - 1)
        self.levels = nn.ModuleList(
            conv(c_in, out_channels, batch_norm, dilation=d)
            for c_in, d in zip(channels, dilations, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for level in self.levels:
            x = level(x)
            total = total + x
        return total


class DilatedUNet(UNet):
    """lyakaap's defaults: 44 base channels, 3 stages, no BatchNorm, dilations 1..32 at the bottleneck.

    Args:
        in_channels: input channels.
        classes: output channels.
        base_channels: width of the first stage.
        depth: max-pool stages.
        batch_norm: BatchNorm after every convolution.
        dilations: of the bottleneck's cascade, in order.
        encoder_weights: must be None.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 1,
        base_channels: int = 44,
        depth: int = 3,
        batch_norm: bool = False,
        dilations: Sequence[int] = (1, 2, 4, 8, 16, 32),
        encoder_weights: str | None = None,
    ):
        self.dilations = tuple(dilations)  # read by make_bottleneck during UNet.__init__
        super().__init__(in_channels, classes, base_channels, depth, batch_norm, encoder_weights)

    def make_bottleneck(self, in_channels: int, out_channels: int, batch_norm: bool) -> nn.Module:
        return DilatedCascade(in_channels, out_channels, self.dilations, batch_norm)
