"""Reading Kaggle's Carvana layout: ``train/`` (or ``train_hq/``) JPEGs, ``train_masks/`` GIFs, ``test/``.

The competition's own names and formats are spelled here; every other stage gets ``Sample``s and arrays."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana.errors import CarvanaError

MASKS_DIR = "train_masks"
MASK_SUFFIX = "_mask.gif"
IMAGE_SUFFIX = ".jpg"
SAMPLE_SUBMISSION = "sample_submission.csv"
METADATA = "metadata.csv"
METADATA_ID = "id"  # its car id column; the others: year, make, model, trim1, trim2
TRAIN_DIR = "train"
TEST_DIR = "test"
ANGLES = 16  # photos of each car, angles 01..16 of the turntable


@dataclass(frozen=True)
class Sample:
    """One photo: ``image_id`` is the file stem (``<car>_<NN>``), ``mask`` is None for test images."""

    image_id: str
    image: Path
    mask: Path | None = None

    @property
    def car(self) -> str:
        return self.image_id.rsplit("_", 1)[0]


def list_images(folder: str | Path) -> list[Path]:
    """The JPEGs of a folder, sorted by name; an error names the folder if it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CarvanaError(f"{folder}: image folder not found (set data.root to a Kaggle-layout folder)")
    images = sorted(folder.glob(f"*{IMAGE_SUFFIX}"))
    if not images:
        raise CarvanaError(f"{folder}: no {IMAGE_SUFFIX} images")
    return images


def train_samples(root: str | Path, images_dir: str = TRAIN_DIR) -> list[Sample]:
    """Every training image with its mask; an image without a mask is an error naming both files."""
    root = Path(root)
    samples = []
    for image in list_images(root / images_dir):
        mask = mask_path(root / MASKS_DIR, image.stem)
        if not mask.is_file():
            raise CarvanaError(f"{image}: no mask {mask}")
        samples.append(Sample(image.stem, image, mask))
    return samples


def test_samples(root: str | Path, images_dir: str = TEST_DIR) -> list[Sample]:
    """Every test image (no masks)."""
    return [Sample(image.stem, image) for image in list_images(Path(root) / images_dir)]


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); OpenCV's JPEG decoder is the fastest on the stack, and it writes RGB itself
    (no second full-size pass to swap the channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise CarvanaError(f"{path}: cannot decode image")
    return image


def read_mask(path: Path) -> np.ndarray:
    """Binary uint8 (H, W) in {0, 1}; Pillow decodes the palette GIFs about 6x faster than OpenCV."""
    try:
        with Image.open(path) as gif:
            mask = np.array(gif)  # writable, so torch can share it
    except OSError as error:
        raise CarvanaError(f"{path}: cannot decode mask ({error})") from error
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask if mask.max(initial=0) <= 1 else (mask > 127).astype(np.uint8)


def read_metadata(path: str | Path) -> dict[str, dict[str, str]]:
    """``metadata.csv``: car id -> its row (year, make, model, ...), so a tool can say which car fails."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, strict=True)
            if METADATA_ID not in (reader.fieldnames or ()):
                raise CarvanaError(f"{path}: no {METADATA_ID} column in its header")
            return {row[METADATA_ID]: row for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CarvanaError(f"{path}: unreadable car metadata ({error})") from None


def mask_path(masks_dir: str | Path, image_id: str) -> Path:
    """Where Kaggle keeps the mask of ``image_id``: ``<masks_dir>/<image_id>_mask.gif``."""
    return Path(masks_dir) / f"{image_id}{MASK_SUFFIX}"


def image_path(images_dir: str | Path, image_id: str) -> Path:
    """``<images_dir>/<image_id>.jpg``."""
    return Path(images_dir) / f"{image_id}{IMAGE_SUFFIX}"
