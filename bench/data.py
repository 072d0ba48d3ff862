"""Inputs the cases share: the real competition files, scaled copies of them, and small networks.

The real files stay where they are (``CARVANA_SHARED``, default ``../shared/carvana`` beside the checkout);
anything derived from them is written under the run's scratch folder and deleted with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from carvana.data.kaggle import Sample, read_image, read_mask, train_samples

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CARVANA_SHARED", REPO.parent / "shared" / "carvana"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # conf/train.yaml's module.mean / module.std


def full_root() -> Path:
    """The folder of the 72 real 1918x1280 train pairs, in Kaggle's layout."""
    return SHARED / "full"


def real_samples(count: int | None = None) -> list[Sample]:
    """The first ``count`` (default all 72) real train pairs, sorted by name."""
    return train_samples(full_root())[:count]


def scaled_copies(samples: list[Sample], folder: Path, size: tuple[int, int]) -> list[Sample]:
    """JPEG + GIF copies of ``samples`` resized to ``size`` (H, W), for cases where full resolution would
    take too long on a CPU; the masks keep their {0, 1} values."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "train_masks").mkdir(exist_ok=True)
    height, width = size
    copies = []
    for sample in samples:
        assert sample.mask is not None
        image = cv2.resize(read_image(sample.image), (width, height), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(read_mask(sample.mask), (width, height), interpolation=cv2.INTER_NEAREST)
        jpg = folder / "train" / sample.image.name
        gif = folder / "train_masks" / sample.mask.name
        cv2.imwrite(str(jpg), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        Image.fromarray(mask, mode="L").convert("P").save(gif)
        copies.append(Sample(sample.image_id, jpg, gif))
    return copies


# Widths of ``conv_net``: SMALL is about a tenth of LinkNet-18's FLOPs per pixel (18 against 196 GFLOP for a
# 1280x1920 image), TINY a fortieth (4.8), for the runs where only correctness or memory matters.
SMALL, TINY = (32, 64, 64), (16, 32, 32)


def conv_net(widths: tuple[int, int, int] = SMALL, seed: int = 0) -> nn.Module:
    """Three convolutions at 1/2 and 1/4 resolution, a 1x1 head and a 4x upsampling: lighter than any real
    model, so that a CPU predicts full-resolution images in a fraction of a second each, and so that the
    framework's own costs weigh more against it than against a real network. Not flip-equivariant, so
    hflip TTA really changes its output."""
    first, second, third = widths
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, first, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(first, second, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(second, third, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(third, 1, 1),
        nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
    ).eval()


def normalise(image: torch.Tensor) -> torch.Tensor:
    """float NCHW of a uint8 NHWC batch, as a user writes it: equal to ``carvana.models.NetworkInput`` to
    float rounding."""
    mean = torch.tensor(MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(STD).view(1, -1, 1, 1) * 255
    return (image.permute(0, 3, 1, 2).float() - mean) / std


def as_bool_masks(samples: list[Sample]) -> list[np.ndarray]:
    """The samples' masks decoded once, as the boolean arrays a submission thresholds to."""
    return [read_mask(sample.mask) != 0 for sample in samples if sample.mask is not None]


def bare_trainer(**kwargs) -> pl.Trainer:
    """A Trainer with no logger, checkpoints, progress bar or summary: only the work being measured."""
    return pl.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **kwargs,
        }
    )
