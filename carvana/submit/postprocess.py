"""Mask clean-up used by the top Carvana teams (keep the car, drop specks, fill holes), and its measured gain.

Each step is switchable so that ``evaluate`` can answer, on out-of-fold predictions, whether it helps: at
Dice ~0.997 a step that removes a true wing mirror costs more than the specks it cleans.
Pieces are labelled with ``cv2.connectedComponents`` and measured with ``np.bincount``: ~6 ms on a noisy
1918x1280 mask, where ``connectedComponentsWithStats`` alone takes ~15 ms.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from carvana import runs
from carvana.data.kaggle import MASK_SUFFIX, mask_path, read_mask
from carvana.errors import CarvanaError, check_folder, check_fraction, check_shape, check_workers, run_command
from carvana.metrics import dice
from carvana.progress import track
from carvana.workers import imap_unordered


@dataclass(frozen=True)
class PostProcess:
    """Mask -> cleaned uint8 {0,1} mask of the same shape; picklable, so it travels to worker processes.

    ``min_size`` drops 8-connected pieces of fewer pixels; ``largest_component`` keeps only the biggest
    piece (and still drops it if it is under ``min_size``); ``fill_holes`` then turns every background
    region that does not touch the image border (4-connected) into car.

    Args:
        largest_component: keep only the largest 8-connected piece.
        min_size: drop pieces of fewer pixels (0: none).
        fill_holes: fill background regions that do not touch the border.
    """

    largest_component: bool = False
    min_size: int = 0
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise CarvanaError(f"min_size must be >= 0 pixels, got {self.min_size}")

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        # A copy (the caller's mask is never modified); `!= 0` would cost 1 ms more on a bool mask.
        out = np.array(mask, dtype=np.bool_).view(np.uint8)
        if out.ndim != 2:
            raise CarvanaError(f"post-processing takes a 2-D mask, got shape {out.shape}")
        if self.largest_component or self.min_size > 1:
            out = _drop_components(out, self.min_size, self.largest_component)
        if self.fill_holes:
            out = _fill_holes(out)
        return out


def _drop_components(mask: np.ndarray, min_size: int, largest: bool) -> np.ndarray:
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count == 1:  # empty mask
        return mask
    # One piece (a clean prediction) needs no label histogram.
    if count == 2:
        areas = np.array([0, np.count_nonzero(mask)])
    else:
        areas = np.bincount(labels.ravel(), minlength=count)
    keep = areas >= min_size
    keep[0] = False
    if largest:
        biggest = 1 + int(np.argmax(areas[1:]))
        keep[:] = False
        keep[biggest] = areas[biggest] >= min_size
    kept = np.flatnonzero(keep)
    if kept.size == count - 1:
        return mask
    if kept.size == 1:  # one comparison is ~10x cheaper than a lookup
        return (labels == kept[0]).view(np.uint8)
    return np.take(keep.view(np.uint8), labels)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    count, labels = cv2.connectedComponents((mask == 0).view(np.uint8), connectivity=4)
    # Label 0 is the car; a background region touches the border iff one of its labels is on it.
    border = np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1]))
    car = np.ones(count, np.uint8)
    car[border] = 0
    car[0] = 1
    if np.count_nonzero(car) == 1:  # no hole
        return mask
    return np.take(car, labels)


def _score(pair: tuple[str, str], cutoff: int, steps: Mapping[str, PostProcess]) -> list[float]:
    """Dice of every variant on one (prediction map, true mask GIF) pair."""
    path, gif = pair
    prob = runs.read_map(path)
    truth = read_mask(Path(gif))
    check_shape(Path(path).stem, path, prob.shape, truth.shape, f"the size of its mask {gif}")
    mask = prob > np.uint8(cutoff)
    return [dice(step(mask), truth) for step in steps.values()]


def evaluate(
    oof_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    steps: Mapping[str, PostProcess],
    threshold: float = 0.5,
    workers: int = 0,
) -> dict[str, float]:
    """Mean per-image Dice of each post-processing variant on an out-of-fold prediction folder.

    Scores every map of ``oof_dir`` that has ``<id>_mask.gif`` in ``masks_dir``; mask = map >
    threshold*255 as in the submission. The plain ``none`` baseline comes first, added when missing.
    ``workers=0`` uses every CPU.
    """
    oof_dir, masks_dir = Path(oof_dir), Path(masks_dir)
    check_fraction("threshold", threshold)
    check_workers(workers)
    files = runs.input_maps(oof_dir)
    check_folder(masks_dir)
    runs.finished_manifest(oof_dir, list(files))
    steps = {"none": PostProcess(), **{name: step for name, step in steps.items() if name != "none"}}
    masks = {entry.name for entry in os.scandir(masks_dir)}
    pairs = [
        (str(path), str(mask_path(masks_dir, image_id)))
        for image_id, path in files.items()
        if mask_path(masks_dir, image_id).name in masks
    ]
    if not pairs:
        raise CarvanaError(f"no map in {oof_dir} has a <id>{MASK_SUFFIX} in {masks_dir}")
    score = functools.partial(_score, cutoff=math.floor(threshold * 255), steps=steps)
    totals = np.zeros(len(steps))
    for dices in track(imap_unordered(score, pairs, workers), len(pairs), f"post-processing {oof_dir}"):
        totals += dices
    return dict(zip(steps, (totals / len(pairs)).tolist(), strict=True))


def main(argv: list[str] | None = None) -> int:
    """CLI: a table of mean Dice per post-processing variant and its gain over none; 2 on a CarvanaError."""
    parser = argparse.ArgumentParser(prog="carvana postprocess", description=__doc__.splitlines()[0])
    parser.add_argument("oof_dir", type=Path, help="out-of-fold prediction folder, e.g. <run>/oof")
    parser.add_argument("masks_dir", type=Path, help=f"true masks <id>{MASK_SUFFIX}, e.g. <root>/train_masks")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--min-size", type=int, default=1000, help="pixels, for the min_size variant")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    args = parser.parse_args(argv)

    def action() -> str:
        steps = {
            "largest_component": PostProcess(largest_component=True),
            f"min_size={args.min_size}": PostProcess(min_size=args.min_size),
            "fill_holes": PostProcess(fill_holes=True),
            "largest+fill": PostProcess(largest_component=True, fill_holes=True),
        }
        scores = evaluate(args.oof_dir, args.masks_dir, steps, args.threshold, args.workers)
        width = max(map(len, scores))
        lines = [f"{'variant':<{width}}  mean Dice  vs none"]
        lines += [
            f"{name:<{width}}  {value:.6f}   {value - scores['none']:+.6f}" for name, value in scores.items()
        ]
        return "\n".join(lines)

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
