"""The competition metric, per image: Dice of two binary masks, 1 when both are empty (Kaggle's rule).

``dice`` scores masks on disk with numpy (out-of-fold scores, post-processing, the second level);
``per_image_dice`` scores a batch on the device during validation. Both give the same number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Per-image Dice of two binary masks (nonzero = car), 1.0 when both are empty."""
    pred, truth = pred != 0, truth != 0
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(pred & truth) / total


def per_image_dice(probs: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice of every image of an (N, ...) batch of probabilities against its binary target (torchmetrics'
    per-sample F1, ``zero_division=1``); imported lazily so the numpy tools start without torch."""
    from torchmetrics.functional.classification import binary_f1_score

    return binary_f1_score(
        probs.flatten(1),
        target.flatten(1),
        threshold=threshold,
        multidim_average="samplewise",
        zero_division=1,
    )
