"""LightningDataModule: one fold of the car-grouped split, with geometry and augmentation from config."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import albumentations as A
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from carvana import runs
from carvana.data import folds
from carvana.data import synthetic as synthetic_set
from carvana.data.check import require_names
from carvana.data.datasets import CarvanaDataset, FocusDataset, StackedDataset, oof_maps
from carvana.data.focus import Focus
from carvana.data.geometry import Geometry
from carvana.data.kaggle import Sample, train_samples
from carvana.data.sampling import EpochOrder, OrderedLoader
from carvana.errors import CarvanaError

log = logging.getLogger(__name__)


class CarvanaDataModule(pl.LightningDataModule):
    """Train on every fold but ``fold``, validate on ``fold`` at the original resolution.

    Args:
        root: a Kaggle-layout folder; None selects the embedded synthetic dataset, generated into
            ``cache_dir`` on first use.
        fold: the validation fold, in ``0..n_folds-1``.
        n_folds: how many car-grouped folds the cars are dealt into.
        geometry: how images meet the network's grid (pad, resize or crop) and are restored.
        augment: albumentations transforms by name, applied to training pairs after the geometry.
        cache_dir: where the synthetic set and the mask-area cache live.
        folds_file: the run's ``folds.csv``: reused when it exists (a resumed run), else written.
        images_dir: ``train`` or ``train_hq``.
        synthetic: the synthetic set's parameters (cars, test_cars, width, height, seed).
        pseudo_root: a Kaggle-layout folder of pseudo-labelled test images (``carvana.submit.pseudo``): every
            fold trains on all of them and validates on none.
        sources: first-level experiment folders such as ``outputs/linknet34``; they make this the second
            level, each image stacked with their out-of-fold maps.
        focus: a second stage (``carvana.data.focus``: ``Box`` or ``Contour``) on the out-of-fold maps of
            the one experiment in ``sources``, its first stage; it trains and validates on windows of
            ``geometry.crop`` (``geometry.mode=crop``).
        batch_size: training images per step.
        val_batch_size: validation images per step; None = ``batch_size``.
        num_workers: DataLoader worker processes.
        seed: the training order's and augmentation's seed (``carvana.data.sampling``): the same draws
            with or without workers, and across a resume.
    """

    def __init__(
        self,
        root: str | None,
        fold: int,
        n_folds: int,
        geometry: Geometry,
        augment: Mapping[str, A.BasicTransform] | None,
        cache_dir: str,
        folds_file: str | None = None,
        images_dir: str = "train",
        synthetic: Mapping[str, int] | None = None,
        pseudo_root: str | None = None,
        sources: Sequence[str] | None = None,
        focus: Focus | None = None,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        if not 0 <= fold < n_folds:
            raise CarvanaError(f"fold={fold}: must be in 0..{n_folds - 1} (n_folds={n_folds})")
        self.synthetic = None if root else dict(synthetic or {})
        self.root = Path(root) if root else synthetic_set.default_root(cache_dir)
        self.fold, self.n_folds = fold, n_folds
        self.geometry = geometry
        self.augment = list((augment or {}).values())
        self.cache_dir = cache_dir
        self.folds_file = Path(folds_file) if folds_file else None
        self.images_dir = images_dir
        self.pseudo_root = Path(pseudo_root) if pseudo_root else None
        self.sources = [Path(source) for source in sources or []]
        self.focus = focus
        if focus is not None and (len(self.sources) != 1 or geometry.mode != "crop"):
            raise CarvanaError(
                "data.focus: needs the first stage's experiment folder as the one data.sources entry, "
                "and data.geometry.mode=crop (its windows are data.geometry.crop)"
            )
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: CarvanaDataset | None = None
        self.val_set: CarvanaDataset | None = None
        self.order: EpochOrder | None = None
        self._resume_at = (0, 0)  # (epoch, images of it already trained on), from a checkpoint

    @override
    def prepare_data(self) -> None:
        if self.synthetic is not None:
            synthetic_set.ensure(self.root, **self.synthetic)

    def split(self, samples: list[Sample]) -> dict[str, int]:
        """The car -> fold table: reused from ``folds_file`` when it exists (a resumed run), else built."""
        cars = {s.car for s in samples}
        if self.folds_file and self.folds_file.is_file():
            table = runs.read_folds(self.folds_file)
            if set(table) != cars:
                raise CarvanaError(f"{self.folds_file}: lists other cars than {self.root / self.images_dir}")
            return table
        table = folds.assign(folds.car_areas(samples, self.cache_dir), self.n_folds)
        if self.folds_file:
            runs.write_folds(self.folds_file, table)
        return table

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        require_names(self.root, self.images_dir)  # a broken pair fails here, not an epoch in
        samples = train_samples(self.root, self.images_dir)
        table = self.split(samples)
        train: list[Sample] = [s for s in samples if table[s.car] != self.fold]
        val: list[Sample] = [s for s in samples if table[s.car] == self.fold]
        if self.pseudo_root:
            pseudo = train_samples(self.pseudo_root)
            shared = sorted({s.car for s in pseudo} & set(table))
            if shared:
                raise CarvanaError(f"data.pseudo_root={self.pseudo_root}: holds training car {shared[0]}")
            train += pseudo
            log.info("fold %d: %d pseudo-labelled images from %s", self.fold, len(pseudo), self.pseudo_root)
        log.info(
            "fold %d: %d train and %d validation images from %s", self.fold, len(train), len(val), self.root
        )
        train_transform = A.Compose([*self.geometry.train(), *self.augment])
        eval_transform = A.Compose(self.geometry.eval())
        if self.sources:
            if self.pseudo_root:
                raise CarvanaError("data.sources: the second level has no maps for data.pseudo_root images")
            folds.check_same_folds(self.sources, table)
            train_maps, val_maps = oof_maps(self.sources, train, table), oof_maps(self.sources, val, table)
        if self.focus is not None:
            size = self.geometry.crop
            self.train_set = FocusDataset(train, train_maps, self.focus, size, train_transform)
            self.val_set = FocusDataset(val, val_maps, self.focus, size, A.Compose([]))
        elif self.sources:
            self.train_set = StackedDataset(train, train_maps, train_transform)
            self.val_set = StackedDataset(val, val_maps, eval_transform, transform_mask=False)
        else:
            self.train_set = CarvanaDataset(train, train_transform)
            self.val_set = CarvanaDataset(val, eval_transform, transform_mask=False)

    def _loader(self, dataset: CarvanaDataset, batch_size: int, order: EpochOrder | None) -> DataLoader:
        return (OrderedLoader if order else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=order,
            drop_last=order is not None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    @override
    def train_dataloader(self) -> DataLoader:
        epoch, skip = self._resume_at
        self.order = EpochOrder(len(self.train_set), self.seed, epoch, skip)
        return self._loader(self.train_set, self.batch_size, self.order)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, None)

    def _images_per_step(self) -> int:
        return self.batch_size * (self.trainer.world_size if self.trainer else 1)

    @override
    def state_dict(self) -> dict[str, int]:
        """Where the training order stands, saved in every checkpoint: the epoch being iterated and its
        batches trained on (Lightning's own count, so prefetched batches are not counted)."""
        if self.order is None or self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.order.epoch, "images": done * self._images_per_step()}

    @override
    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the order where the checkpoint stood: inside its epoch, or at the next one."""
        if not state_dict:
            return
        epoch, images = state_dict["epoch"], state_dict["images"]
        per_epoch = len(self.train_set) // self.batch_size * self._images_per_step() if self.train_set else 0
        self._resume_at = (epoch, images) if images < per_epoch else (epoch + 1, 0)
