"""The from-scratch U-Net (Ronneberger et al. 2015), whose encoder, decoder and bottleneck other nets reuse.

segmentation_models_pytorch builds U-Nets on pretrained classification encoders only; the 1st place's
from-scratch U-Net and the 3rd place's dilated U-Net are plain double-conv encoders, hence this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carvana.errors import CarvanaError


def conv(in_channels: int, out_channels: int, batch_norm: bool, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution (size-preserving), optional BatchNorm, ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """The U-Net stage: two 3x3 convolutions."""
    return nn.Sequential(
        conv(in_channels, out_channels, batch_norm), conv(out_channels, out_channels, batch_norm)
    )


class Up(nn.Module):
    """Nearest-neighbour 2x upsampling and a 3x3 convolution (no transposed-conv checkerboards), then the skip
    connection concatenated and a double conv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool):
        super().__init__()
        self.reduce = conv(in_channels, out_channels, batch_norm)
        self.fuse = double_conv(2 * out_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.reduce(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.fuse(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with ``depth`` max-pool stages of double convs, ``base_channels`` doubling at each stage.

    Inputs need sides divisible by ``2**depth``. ``encoder_weights`` is accepted so that every model config
    shares smp's interface (recipes set ``model.encoder_weights=null`` whatever the model); this network has
    no pretrained weights, so it must stay null.

    Args:
        in_channels: input channels (3, or 3 + K maps at the second level).
        classes: output channels (1: the car's logit).
        base_channels: width of the first stage.
        depth: max-pool stages.
        batch_norm: BatchNorm after every convolution.
        encoder_weights: must be None.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 1,
        base_channels: int = 64,
        depth: int = 4,
        batch_norm: bool = True,
        encoder_weights: str | None = None,
    ):
        super().__init__()
        if encoder_weights is not None:
            raise CarvanaError(
                f"model.encoder_weights={encoder_weights}: {type(self).__name__} trains from scratch "
                "(no pretrained weights); set model.encoder_weights=null"
            )
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            double_conv(c_in, c_out, batch_norm)
            for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
        )
        self.bottleneck = self.make_bottleneck(widths[-2], widths[-1], batch_norm)
        self.decoder = nn.ModuleList(
            Up(c_in, c_out, batch_norm) for c_in, c_out in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.head = nn.Conv2d(widths[0], classes, 1)

    def make_bottleneck(self, in_channels: int, out_channels: int, batch_norm: bool) -> nn.Module:
        """The block at the lowest resolution; subclasses swap it."""
        return double_conv(in_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, skip in zip(self.decoder, reversed(skips), strict=True):
            x = up(x, skip)
        return self.head(x)
