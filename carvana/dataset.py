"""Reading Kaggle's Carvana layout: ``train/`` (or ``train_hq/``) JPEGs, ``train_masks/`` GIFs, ``test/``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from carvana.errors import CarvanaError
from carvana.io import reuse_freed_buffers

MASKS_DIR = "train_masks"
MASK_SUFFIX = "_mask.gif"
OOF_DIR = "oof"  # in a run folder: the fold's out-of-fold probability maps, <image_id>.png


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
    images = sorted(folder.glob("*.jpg"))
    if not images:
        raise CarvanaError(f"{folder}: no .jpg images")
    return images


def train_samples(root: str | Path, images_dir: str = "train") -> list[Sample]:
    """Every training image with its mask; an image without a mask is an error naming both files."""
    root = Path(root)
    samples = []
    for image in list_images(root / images_dir):
        mask = root / MASKS_DIR / f"{image.stem}{MASK_SUFFIX}"
        if not mask.is_file():
            raise CarvanaError(f"{image}: no mask {mask}")
        samples.append(Sample(image.stem, image, mask))
    return samples


def test_samples(root: str | Path, images_dir: str = "test") -> list[Sample]:
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


class CarvanaDataset(Dataset):
    """Yields uint8 HWC image tensors (normalised later, on the device) and uint8 (1, H, W) masks.

    With ``transform_mask=False`` the mask stays at the original resolution, so validation scores
    are computed on the original pixels after the model output is restored.
    """

    def __init__(self, samples: Sequence[Sample], transform: A.Compose, transform_mask: bool = True):
        self.samples = list(samples)
        self.transform = transform
        self.transform_mask = transform_mask

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        """The network's uint8 (H, W, C) input before transforms; the second level adds channels here."""
        return read_image(self.samples[index].image)

    def __getitem__(self, index: int) -> dict:
        reuse_freed_buffers()  # in the process that decodes: a DataLoader worker, or this one
        sample = self.samples[index]
        image = self.load_image(index)
        item: dict = {"id": sample.image_id, "height": image.shape[0], "width": image.shape[1]}
        if sample.mask is None:
            item["image"] = torch.from_numpy(self.transform(image=image)["image"])
            return item
        mask = read_mask(sample.mask)
        if mask.shape != image.shape[:2]:
            raise CarvanaError(f"{sample.mask}: size {mask.shape[::-1]} differs from {sample.image}")
        if self.transform_mask:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            image = self.transform(image=image)["image"]
        item["image"] = torch.from_numpy(np.ascontiguousarray(image))
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return item


class StackedDataset(CarvanaDataset):
    """``CarvanaDataset`` whose images carry K probability maps (8-bit PNGs) as channels 4..3+K."""

    def __init__(
        self,
        samples: Sequence[Sample],
        maps: Sequence[Sequence[Path]],
        transform: A.Compose,
        transform_mask: bool = True,
    ):
        super().__init__(samples, transform, transform_mask)
        self.maps = list(maps)

    def load_image(self, index: int) -> np.ndarray:
        image = read_image(self.samples[index].image)
        probs = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in self.maps[index]]
        for path, prob in zip(self.maps[index], probs, strict=True):
            if prob is None or prob.shape != image.shape[:2]:
                raise CarvanaError(f"{path}: unreadable, or not the size of {self.samples[index].image}")
        return np.dstack([image, *probs])
