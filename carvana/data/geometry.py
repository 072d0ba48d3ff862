"""How images meet the network's input grid, and how predictions are taken back to the original pixels.

Three modes, as the top teams used them:
- ``pad``: full resolution, padded bottom/right to a multiple of ``divisor`` (1918 -> 1920); predictions are
  cropped back.
- ``resize``: resized to ``size``; predictions are resized back.
- ``crop``: random ``crop`` windows for training, full-resolution ``pad`` for validation and prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from carvana.errors import CarvanaError

Mode = Literal["pad", "resize", "crop"]


@dataclass(frozen=True)
class Geometry:
    """The network's input grid and its inverse.

    Args:
        mode: ``pad``, ``resize`` or ``crop`` (see the module's docstring).
        size: (height, width) of ``resize``.
        crop: (height, width) of the training windows of ``crop``.
        divisor: every side the network sees is a multiple of it (32 for a 5-stage encoder).
    """

    mode: Mode = "pad"
    size: tuple[int, int] = (1280, 1920)
    crop: tuple[int, int] = (512, 512)
    divisor: int = 32

    def __post_init__(self) -> None:
        if self.mode not in ("pad", "resize", "crop"):
            raise CarvanaError(f"data.geometry.mode={self.mode}: must be pad, resize or crop")
        for name in ("size", "crop"):
            height, width = getattr(self, name)
            if height % self.divisor or width % self.divisor:
                raise CarvanaError(
                    f"data.geometry.{name}={[height, width]}: both sides must be multiples of {self.divisor}"
                )

    def _pad(self) -> A.PadIfNeeded:
        return A.PadIfNeeded(
            min_height=None,
            min_width=None,
            pad_height_divisor=self.divisor,
            pad_width_divisor=self.divisor,
            position="top_left",
            border_mode=cv2.BORDER_REFLECT_101,
        )

    def _resize(self) -> A.Resize:
        return A.Resize(*self.size, interpolation=cv2.INTER_AREA)

    def train(self) -> list[A.BasicTransform]:
        """Transforms applied to image and mask together before augmentation."""
        if self.mode == "resize":
            return [self._resize()]
        if self.mode == "crop":
            height, width = self.crop
            return [
                A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_REFLECT_101),
                A.RandomCrop(height, width),
            ]
        return [self._pad()]

    def eval(self) -> list[A.BasicTransform]:
        """Transforms of the image for validation and prediction; ``restore`` undoes them."""
        return [self._resize()] if self.mode == "resize" else [self._pad()]

    def restore(self, output: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Take an (N, C, h, w) network output back to the original (height, width) pixels."""
        if self.mode == "resize":
            return F.interpolate(output, size=(height, width), mode="bilinear", align_corners=False)
        return output[..., :height, :width]
