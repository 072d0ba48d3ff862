"""Second level: a small U-Net that refines the image plus K first-level probability maps.

Training maps are strictly out-of-fold. An image of a car in fold j gets, from each first-level model, the
map that model's fold-j run predicted (``<source>/fold<j>/oof/<id>.png``): that run never trained on the
car. The refiner uses the same car-grouped folds, so its validation cars are out-of-fold for it as well.
At test time the maps are the first-level models' test predictions (``predict.py`` folders).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from carvana import folds
from carvana.dataset import CarvanaDataset, Sample, read_image
from carvana.errors import CarvanaError
from carvana.oof import OOF_DIR

IMAGE_CHANNELS = 3


def check_folds(sources: Sequence[Path], table: Mapping[str, int]) -> None:
    """Every source's fold runs must use the refiner's car -> fold table, else maps would leak."""
    for source in sources:
        for fold in sorted(set(table.values())):
            path = source / f"fold{fold}" / "folds.csv"
            if not path.is_file():
                raise CarvanaError(f"data.sources: {path} missing (train fold {fold} of {source} first)")
            if folds.read(path) != dict(table):
                raise CarvanaError(f"data.sources: {path} splits the cars differently from this run")


def oof_maps(
    sources: Sequence[Path], samples: Sequence[Sample], table: Mapping[str, int]
) -> list[list[Path]]:
    """For each sample, its out-of-fold map from each source: the source's run of the car's own fold."""
    maps = [
        [source / f"fold{table[s.car]}" / OOF_DIR / f"{s.image_id}.png" for source in sources]
        for s in samples
    ]
    return _existing(maps, "out-of-fold map (run the sources' OOF step)")


def test_maps(sources: Sequence[Path], samples: Sequence[Sample]) -> list[list[Path]]:
    """For each test sample, each source's test prediction ``<source>/<id>.png``."""
    return _existing(
        [[source / f"{s.image_id}.png" for source in sources] for s in samples], "test prediction"
    )


def _existing(maps: list[list[Path]], what: str) -> list[list[Path]]:
    missing = [path for paths in maps for path in paths if not path.is_file()]
    if missing:
        raise CarvanaError(f"{missing[0]}: no {what}; {len(missing)} missing")
    return maps


class StackedDataset(CarvanaDataset):
    """``CarvanaDataset`` whose images carry the K probability maps as channels 4..3+K (uint8)."""

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
