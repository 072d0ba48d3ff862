"""Car-grouped folds stratified by mask area: all 16 angles of a car in one fold (1st and 4th place scheme).

Cars are sorted by their total mask area (largest first, ties by id) and dealt round-robin, so every fold
gets the same mix of small and large cars and 318 cars give 64/64/64/63/63.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from carvana import runs
from carvana.data.kaggle import Sample, read_mask
from carvana.errors import CarvanaError
from carvana.files import write_csv


def assign(areas: Mapping[str, float], n_folds: int) -> dict[str, int]:
    """Fold of every car: rank by area (descending), fold = rank % n_folds."""
    if n_folds < 2:
        raise CarvanaError(f"n_folds={n_folds}: need at least 2 folds")
    if len(areas) < n_folds:
        raise CarvanaError(f"n_folds={n_folds}: only {len(areas)} cars to split")
    ranked = sorted(areas, key=lambda car: (-areas[car], car))
    return {car: rank % n_folds for rank, car in enumerate(ranked)}


def car_areas(samples: Sequence[Sample], cache_dir: str | Path | None = None) -> dict[str, int]:
    """Total mask pixels per car, decoded in threads and cached by the mask list (it never changes)."""
    key = hashlib.sha1("\n".join(str(s.mask.resolve()) for s in samples).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / "areas" / f"{key}.csv" if cache_dir else None
    if cache and cache.is_file():
        return {row["car"]: int(row["area"]) for row in csv.DictReader(cache.open())}
    with ThreadPoolExecutor() as pool:
        pixels = pool.map(lambda s: int(np.count_nonzero(read_mask(s.mask))), samples)
        areas: dict[str, int] = defaultdict(int)
        for sample, count in zip(samples, pixels, strict=True):
            areas[sample.car] += count
    if cache:
        write_csv(cache, ("car", "area"), sorted(areas.items()))
    return dict(areas)


def check_same_folds(
    sources: Sequence[Path], table: Mapping[str, int], what: str = "data.sources", other: str = "this run"
) -> None:
    """Every source experiment's fold runs must use ``table``'s car -> fold split, else its out-of-fold maps
    would leak into the second level, or an ensemble chosen on them would be scored on images some of its
    members trained on. ``what`` names the setting in the errors, ``other`` where ``table`` comes from."""
    for source in sources:
        for fold in sorted(set(table.values())):
            path = runs.fold_dir(source, fold) / runs.FOLDS
            if not path.is_file():
                raise CarvanaError(f"{what}: {path} missing (train fold {fold} of {source} first)")
            if runs.read_folds(path) != dict(table):
                raise CarvanaError(f"{what}: {path} splits the cars differently from {other}")
