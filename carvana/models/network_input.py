"""The network's input: a uint8 NHWC batch standardised on its device, in one pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NetworkInput(nn.Module):
    """float NCHW from a uint8 NHWC batch, on the batch's device: the image channels standardised with
    ``mean``/``std`` (0..1 scale, as the configs give them), further channels (the second level's
    probability maps) scaled to [0, 1].

    One float copy of the batch, then a single fused multiply-add in place, ``x * (1/std) - mean/std``
    (equal to ``(x - mean) / std`` to float rounding): each pass over a full-resolution batch moves 29 MB an
    image, and with the plain out-of-place arithmetic CPU prediction ran at 0.84 of its bare forward passes,
    with this at 0.92 (bench/results.md). Shared by training and prediction, so both see the same numbers.
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
