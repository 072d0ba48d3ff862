"""Pseudo-labels from an ensemble's test predictions (80TFlops' procedure), written as a Kaggle-layout folder.

Only the images the ensemble is sure about become training pairs: a map with few pixels between 0.1 and
0.9 has a mask that is almost certainly right, so training on it adds data without adding label noise.
The output folder reads back with ``carvana.data.kaggle.train_samples``.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana import runs
from carvana.data.kaggle import IMAGE_SUFFIX, MASKS_DIR, image_path, mask_path
from carvana.errors import CarvanaError, check_folder, check_fraction, check_shape, check_workers, run_command
from carvana.files import atomic_write_bytes, atomic_write_text, link_or_copy
from carvana.progress import track
from carvana.workers import imap_unordered

log = logging.getLogger(__name__)

IMAGES_DIR = "train"
CSV = "pseudo.csv"
# Uncertain: 0.1 < v/255 < 0.9, i.e. 26 <= v <= 229 for integer v.
_LOW, _HIGH = math.floor(0.1 * 255) + 1, math.ceil(0.9 * 255) - 1
_PALETTE = [0, 0, 0, 255, 255, 255]  # Kaggle's masks: 0 black, 1 white


def confidence(prob_uint8: np.ndarray) -> float:
    """The uncertain share: fraction of pixels with probability strictly between 0.1 and 0.9."""
    if prob_uint8.dtype != np.uint8 or prob_uint8.size == 0:
        raise CarvanaError(
            f"confidence takes a non-empty uint8 map, got {prob_uint8.dtype} {prob_uint8.shape}"
        )
    return cv2.countNonZero(cv2.inRange(prob_uint8, _LOW, _HIGH)) / prob_uint8.size


def mask_gif(mask: np.ndarray) -> bytes:
    """A {0,1} mask as a single-frame palette GIF like Kaggle's.

    ``optimize=False``: Pillow's palette optimisation (on by default below 512x512 pixels) would store an
    all-car mask as all 0 with a white entry 0, which ``read_mask`` would read back as empty.
    """
    image = Image.fromarray(mask.astype(np.uint8, copy=False))
    image.putpalette(_PALETTE)  # mode L -> P, values unchanged
    buffer = io.BytesIO()
    image.save(buffer, format="GIF", optimize=False)
    return buffer.getvalue()


def _check_sizes(files: dict[str, Path], images_dir: Path) -> None:
    """Every map must be a whole file the size of its JPEG, both read from their headers before anything
    is written."""
    for image_id, path in files.items():
        jpeg = image_path(images_dir, image_id)
        try:
            with Image.open(jpeg) as image:  # reads the header only
                size = image.size[::-1]
        except OSError as error:
            raise CarvanaError(f"{jpeg}: cannot read image ({error})") from None
        check_shape(image_id, path, runs.map_size(path), size, f"the size of its image {jpeg}")


def _select(
    job: tuple[str, Path], images_dir: Path, out_root: Path, max_uncertain: float, cutoff: int
) -> tuple[str, float, bool]:
    """(id, uncertain share, kept) of one (id, map file); a kept image's mask is written before its JPEG,
    so that a JPEG in ``train/`` always has its mask, even after a crash."""
    image_id, path = job
    prob = runs.read_map(path)
    share = confidence(prob)
    if share > max_uncertain:
        return image_id, share, False
    jpeg = image_path(images_dir, image_id)
    atomic_write_bytes(mask_path(out_root / MASKS_DIR, image_id), mask_gif(prob > np.uint8(cutoff)))
    link_or_copy(jpeg, image_path(out_root / IMAGES_DIR, image_id))
    return image_id, share, True


def select_and_write(
    pred_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    max_uncertain: float = 0.005,
    threshold: float = 0.5,
    workers: int = 0,
) -> list[str]:
    """Write the confident predictions of ``pred_dir`` as pseudo-labelled pairs under ``out_root``.

    Keeps the images whose uncertain share is <= ``max_uncertain``: ``train/<id>.jpg`` (hard link to
    ``images_dir/<id>.jpg``, or a copy), ``train_masks/<id>_mask.gif`` (map > threshold*255, as in the
    submission) and ``pseudo.csv`` (id, uncertain share). ``out_root`` must not hold pairs already, so
    that two selections never mix; bad input is refused before it is created. Returns the kept ids,
    sorted; ``workers=0`` uses every CPU.
    """
    pred_dir, images_dir, out_root = Path(pred_dir), Path(images_dir), Path(out_root)
    check_fraction("max_uncertain", max_uncertain)
    check_fraction("threshold", threshold)
    check_workers(workers)
    files = runs.input_maps(pred_dir)
    ids = list(files)
    check_folder(images_dir)
    jpegs = {entry.name for entry in os.scandir(images_dir)}
    missing = [image_id for image_id in ids if f"{image_id}{IMAGE_SUFFIX}" not in jpegs]
    if missing:
        raise CarvanaError(
            f"{len(missing)} of {len(ids)} predictions in {pred_dir} have no JPEG in "
            f"{images_dir}, first: {missing[0]}{IMAGE_SUFFIX}"
        )
    runs.finished_manifest(pred_dir, ids)
    folders = [out_root / IMAGES_DIR, out_root / MASKS_DIR]
    for folder in folders:
        if folder.is_dir() and any(os.scandir(folder)):
            raise CarvanaError(f"{folder} is not empty; write pseudo-labels to a new folder or delete it")
    _check_sizes(files, images_dir)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    select = functools.partial(
        _select,
        images_dir=images_dir,
        out_root=out_root,
        max_uncertain=max_uncertain,
        cutoff=math.floor(threshold * 255),
    )
    jobs = list(files.items())
    results = list(track(imap_unordered(select, jobs, workers), len(jobs), f"pseudo-labels {out_root}"))
    kept = sorted((image_id, share) for image_id, share, keep in results if keep)
    atomic_write_text(out_root / CSV, "id,uncertain\n" + "".join(f"{i},{s:.6g}\n" for i, s in kept))
    if kept:
        log.info("%d of %d predictions kept as pseudo-labels in %s", len(kept), len(ids), out_root)
    else:
        lowest = min(share for _, share, _ in results)
        log.warning(
            "no prediction of %s has an uncertain share <= %g (the lowest is %.6g); no pseudo-label written",
            pred_dir,
            max_uncertain,
            lowest,
        )
    return [image_id for image_id, _ in kept]


class PseudoLabelStep:
    """``predict.py``'s pseudo-labels: once every map is written, the confident ones as a Kaggle-layout
    training folder (``python predict.py ... pseudo=confident``; the ``pseudo`` group of ``conf/``).

    Args:
        out_root: the new Kaggle-layout folder; None writes ``<prediction folder>_pseudo``.
        max_uncertain: the largest share of pixels with 0.1 < p < 0.9 an image may have.
        threshold: mask = probability > threshold, as in the submission.
        workers: processes; 0 = one per CPU.
    """

    def __init__(
        self,
        out_root: str | None = None,
        max_uncertain: float = 0.005,
        threshold: float = 0.5,
        workers: int = 0,
    ):
        check_fraction("pseudo.max_uncertain", max_uncertain)
        self.out_root, self.max_uncertain, self.threshold, self.workers = (
            out_root,
            max_uncertain,
            threshold,
            workers,
        )

    def __call__(self, pred_dir: Path, images_dir: Path) -> str:
        """Select and write the pseudo-labels of ``pred_dir``; returns the line ``predict.py`` prints."""
        out_root = Path(self.out_root or f"{pred_dir}_pseudo")
        kept = select_and_write(
            pred_dir, images_dir, out_root, self.max_uncertain, self.threshold, self.workers
        )
        return f"  pseudo     {out_root} ({len(kept)} images)"


def main(argv: list[str] | None = None) -> int:
    """CLI: ``PRED_DIR IMAGES_DIR OUT_ROOT``; a CarvanaError is one ``error:`` line and exit status 2."""
    parser = argparse.ArgumentParser(prog="carvana pseudo", description=__doc__.splitlines()[0])
    parser.add_argument("pred_dir", type=Path, help="test prediction folder, e.g. an ensemble")
    parser.add_argument("images_dir", type=Path, help="the JPEGs, e.g. <data root>/test")
    parser.add_argument("out_root", type=Path, help="new Kaggle-layout folder for the pseudo-labelled pairs")
    parser.add_argument(
        "--max-uncertain",
        type=float,
        default=0.005,
        help="largest share of pixels with 0.1 < p < 0.9 an image may have",
    )
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    def action() -> str:
        kept = select_and_write(
            args.pred_dir, args.images_dir, args.out_root, args.max_uncertain, args.threshold, args.workers
        )
        return f"{args.out_root}: {len(kept)} pseudo-labelled images"

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
