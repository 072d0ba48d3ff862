"""Datasets of the Kaggle layout: uint8 images and masks as tensors, the second level's stacked maps, and
the windows a second stage trains on.

Images stay uint8 until the device (``carvana.models.NetworkInput`` normalises them there). The second level
stacks each image with K first-level probability maps: out-of-fold maps for training (each from the run of
the image's own fold, which never saw its car), test predictions at test time. A second stage
(``carvana.data.focus``) trains on windows its first stage's out-of-fold map places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from carvana import runs
from carvana.data.buffers import reuse_freed_buffers
from carvana.data.focus import Focus
from carvana.data.kaggle import Sample, read_image, read_mask
from carvana.errors import check_files, check_shape


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

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: an index, or ``(index, draw)`` from ``EpochOrder``, whose draw seeds the transforms so
        that the augmentation does not depend on which process decodes the image."""
        reuse_freed_buffers()  # in the process that decodes: a DataLoader worker, or this one
        index, draw = key if isinstance(key, tuple) else (key, None)
        if draw is not None:
            self.transform.set_random_seed(draw)
        sample = self.samples[index]
        image = self.load_image(index)
        if sample.mask is None:
            item = {"id": sample.image_id, "height": image.shape[0], "width": image.shape[1]}
            item["image"] = torch.from_numpy(self.transform(image=image)["image"])
            return item
        mask = read_mask(sample.mask)
        check_shape(sample.image_id, sample.mask, mask.shape, image.shape, f"the size of {sample.image}")
        image, mask = self.select(index, draw, image, mask)
        item = {"id": sample.image_id, "height": image.shape[0], "width": image.shape[1]}
        if self.transform_mask:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            image = self.transform(image=image)["image"]
        item["image"] = torch.from_numpy(np.ascontiguousarray(image))
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return item

    def select(
        self, index: int, draw: int | None, image: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The part of a training pair the network sees: all of it, but in ``FocusDataset``."""
        return image, mask


class StackedDataset(CarvanaDataset):
    """``CarvanaDataset`` whose images carry K probability maps (uint8) as channels 4..3+K."""

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
        sample = self.samples[index]
        image = read_image(sample.image)
        probs = [runs.read_map(path) for path in self.maps[index]]
        for path, prob in zip(self.maps[index], probs, strict=True):
            check_shape(sample.image_id, path, prob.shape, image.shape, f"the size of {sample.image}")
        return np.dstack([image, *probs])


class FocusDataset(StackedDataset):
    """Windows of the training pairs where ``focus`` looks on each image's coarse (first-stage) map: a random
    one per draw in training, and a fixed one per image (seeded by its index) for validation.

    ``maps`` holds each sample's one first-stage map (``oof_maps`` of one source). The map is channel 4 of
    the stacked image; it stays an input channel only where the focus feeds it to
    the network (``Contour``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        maps: Sequence[Sequence[Path]],
        focus: Focus,
        size: tuple[int, int],
        transform: A.Compose,
    ):
        super().__init__(samples, maps, transform, transform_mask=True)
        self.focus, self.size = focus, tuple(size)

    def select(
        self, index: int, draw: int | None, image: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(index if draw is None else draw)
        top, left, height, width = self.focus.train_window(image[..., 3], self.size, rng)
        window = np.s_[top : top + height, left : left + width]
        return image[window][..., : self.focus.channels], mask[window]


class _MapFinder:
    """A map file by (prediction folder, image id), in either format (``carvana.runs.map_files``), or, when
    it is missing, the name it would have beside the folder's other maps, for ``check_files`` to name; each
    folder is listed once."""

    def __init__(self) -> None:
        self.listed: dict[Path, dict[str, Path]] = {}

    def __call__(self, folder: Path, image_id: str) -> Path:
        if folder not in self.listed:
            self.listed[folder] = runs.map_files(folder) if folder.is_dir() else {}
        found = self.listed[folder]
        if image_id in found:
            return found[image_id]
        other = next(iter(found.values()), None)  # named in the folder's own format
        return folder / f"{image_id}{other.suffix}" if other else runs.map_path(folder, image_id)


def oof_maps(
    sources: Sequence[Path], samples: Sequence[Sample], table: Mapping[str, int]
) -> list[list[Path]]:
    """For each sample, its out-of-fold map from each source: the source's run of the car's own fold."""
    find = _MapFinder()
    maps = [
        [find(runs.fold_dir(source, table[s.car]) / runs.OOF, s.image_id) for source in sources]
        for s in samples
    ]
    return check_files(maps, "out-of-fold map (run the sources' OOF step)")


def test_maps(sources: Sequence[Path], samples: Sequence[Sample]) -> list[list[Path]]:
    """For each test sample, each source's test prediction (``predict.py`` folders)."""
    find = _MapFinder()
    return check_files(
        [[find(Path(source), s.image_id) for source in sources] for s in samples], "test prediction"
    )
