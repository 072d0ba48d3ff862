"""Channels-last weights: the network's convolutions run on NHWC, the layout its uint8 batches arrive in."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override


class ChannelsLast(Callback):
    """Convert the module to ``torch.channels_last`` when fitting starts.

    ``NetworkInput`` already hands the network an NHWC-strided tensor (a permuted uint8 batch), so the
    weights are the only thing left in NCHW; with both in NHWC, oneDNN on CPU and cuDNN on tensor-core GPUs
    skip their layout conversions (bench/results.md: LinkNet-34 training steps on this CPU).
    """

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)
