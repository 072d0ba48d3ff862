"""Where a second-stage network looks, given a first stage's coarse probability map.

Two of the top teams' stages, as one interface (``data.focus``): the windows of an image a network is
trained on and predicts, and how its window predictions become the image's map.

- ``Box`` (7th place): a low-resolution model finds the car; its mask's bounding box, padded (150 px at
  1918 wide, scaled with the width), is predicted at full resolution, and outside it is background.
  Training draws random windows of ``data.geometry.crop`` inside the box.
- ``Contour`` (11th / 15th place): patches centred on the coarse mask's contour, seen by a network whose
  input is the image plus the coarse probability, blended back feathered; pixels outside every patch keep
  the coarse value. Patches are ``data.geometry.crop``; training draws them centred on random contour pixels.

Windows are ``(top, left, height, width)`` in the image's own pixels. Maps are uint8 (0..255), as the
prediction folders store them.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from carvana.errors import CarvanaError

Window = tuple[int, int, int, int]


def _cutoff(threshold: float) -> np.uint8:
    """mask = map > cutoff, as the submission thresholds a map."""
    return np.uint8(math.floor(threshold * 255))


def _start(centre: float, size: int, limit: int) -> int:
    """The first pixel of a ``size`` window centred near ``centre``, moved inside ``0..limit``."""
    return int(min(max(round(centre - size / 2), 0), limit - size))


def _check_fits(size: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int]:
    """``size`` as ints; a window larger than the image is a config error."""
    if size[0] > shape[0] or size[1] > shape[1]:
        raise CarvanaError(f"data.geometry.crop={list(size)}: larger than a {shape[0]}x{shape[1]} image")
    return int(size[0]), int(size[1])


class Box:
    """The padded bounding box of the coarse mask.

    Args:
        pad: the margin around the box as a fraction of the image width (150 / 1918 by default).
        threshold: the coarse mask is map > threshold.
    """

    channels = 3  # the network sees the image only; the coarse map only places the box

    def __init__(self, pad: float = 150 / 1918, threshold: float = 0.5):
        if pad < 0:
            raise CarvanaError(f"data.focus.pad={pad}: must be >= 0")
        self.pad, self.cutoff = pad, _cutoff(threshold)

    def box(self, coarse: np.ndarray) -> Window:
        """The padded box of ``coarse > cutoff``, inside the image; the whole image when it finds no car."""
        height, width = coarse.shape
        left, top, box_width, box_height = cv2.boundingRect((coarse > self.cutoff).view(np.uint8))
        if box_width == 0:
            return 0, 0, height, width
        margin = round(self.pad * width)
        bottom, right = min(top + box_height + margin, height), min(left + box_width + margin, width)
        top, left = max(top - margin, 0), max(left - margin, 0)
        return top, left, bottom - top, right - left

    def windows(self, coarse: np.ndarray, size: tuple[int, int]) -> list[Window]:
        """The box, whatever its size: it is predicted whole."""
        return [self.box(coarse)]

    def train_window(self, coarse: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> Window:
        """A ``size`` window inside the box (centred on it when the box is smaller)."""
        height, width = coarse.shape
        crop_height, crop_width = _check_fits(size, coarse.shape)
        top, left, box_height, box_width = self.box(coarse)
        starts = []
        for start, extent, span, limit in (
            (top, box_height, crop_height, height),
            (left, box_width, crop_width, width),
        ):
            if extent <= span:
                starts.append(_start(start + extent / 2, span, limit))
            else:
                starts.append(int(rng.integers(start, start + extent - span + 1)))
        return starts[0], starts[1], crop_height, crop_width

    def blend(self, coarse: torch.Tensor, windows: list[Window], probs: list[torch.Tensor]) -> torch.Tensor:
        """The box's probabilities pasted into background."""
        out = torch.zeros(coarse.shape, dtype=torch.float32, device=coarse.device)
        for (top, left, height, width), prob in zip(windows, probs, strict=True):
            out[top : top + height, left : left + width] = prob
        return out


class Contour:
    """Patches centred on the coarse mask's contour.

    The image is cut into cells of half a patch; every cell holding a contour pixel (a pixel with a
    neighbour on the other side of the mask) gets the patch centred on it, so each contour pixel lies in
    the full-weight middle of a patch (or inside one moved in from the image edge). The blend weighs each
    patch by a feather that is 1 on its middle half and falls linearly to its edge.

    Args:
        threshold: the coarse mask is map > threshold.
    """

    channels = 4  # the image and the coarse probability

    def __init__(self, threshold: float = 0.5):
        self.cutoff = _cutoff(threshold)

    def contour(self, coarse: np.ndarray) -> np.ndarray:
        """Boolean (H, W): the pixels on either side of the coarse mask's edge."""
        mask = (coarse > self.cutoff).view(np.uint8)
        return cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0

    def windows(self, coarse: np.ndarray, size: tuple[int, int]) -> list[Window]:
        """The ``size`` patches of the cells the contour crosses, row by row."""
        height, width = coarse.shape
        patch_height, patch_width = _check_fits(size, coarse.shape)
        cell_height, cell_width = max(patch_height // 2, 1), max(patch_width // 2, 1)
        rows, cols = -(-height // cell_height), -(-width // cell_width)
        edge = np.zeros((rows * cell_height, cols * cell_width), bool)
        edge[:height, :width] = self.contour(coarse)
        cells = edge.reshape(rows, cell_height, cols, cell_width).any(axis=(1, 3))
        return [
            (
                _start((row + 0.5) * cell_height, patch_height, height),
                _start((col + 0.5) * cell_width, patch_width, width),
                patch_height,
                patch_width,
            )
            for row, col in zip(*np.nonzero(cells), strict=True)
        ]

    def train_window(self, coarse: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> Window:
        """A ``size`` patch centred on a random contour pixel (anywhere when the mask has no edge)."""
        height, width = coarse.shape
        patch_height, patch_width = _check_fits(size, coarse.shape)
        ys, xs = np.nonzero(self.contour(coarse))
        if len(ys):
            pick = rng.integers(len(ys))
            centre = ys[pick], xs[pick]
        else:
            centre = rng.integers(height), rng.integers(width)
        return (
            _start(centre[0], patch_height, height),
            _start(centre[1], patch_width, width),
            patch_height,
            patch_width,
        )

    @staticmethod
    def feather(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """(height, width) weights: 1 on the middle half of each side, falling linearly to the edge."""

        def ramp(size: int) -> torch.Tensor:
            steps = torch.arange(size, dtype=torch.float32, device=device)
            return (torch.minimum(steps + 1, size - steps) / max(size / 4, 1)).clamp_(max=1)

        return ramp(height)[:, None] * ramp(width)[None, :]

    def blend(self, coarse: torch.Tensor, windows: list[Window], probs: list[torch.Tensor]) -> torch.Tensor:
        """The feathered mean of the patches where they lie, mixed with the coarse map where their weights
        sum below 1; untouched coarse values outside every patch."""
        out = coarse.float().div(255)
        if not windows:
            return out
        total = torch.zeros_like(out)
        weight = torch.zeros_like(out)
        feather = self.feather(*windows[0][2:], device=out.device)
        for (top, left, height, width), prob in zip(windows, probs, strict=True):
            total[top : top + height, left : left + width].add_(prob * feather)
            weight[top : top + height, left : left + width].add_(feather)
        covered = weight > 0
        alpha = weight.clamp(max=1)
        refined = total[covered] / weight[covered]
        out[covered] = alpha[covered] * refined + (1 - alpha[covered]) * out[covered]
        return out


Focus = Box | Contour
