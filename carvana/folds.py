"""Car-grouped folds stratified by mask area: all 16 angles of a car in one fold (1st and 4th place scheme).

Cars are sorted by their total mask area (largest first, ties by id) and dealt round-robin, so every fold
gets the same mix of small and large cars and 318 cars give 64/64/64/63/63.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from carvana.dataset import Sample, read_mask
from carvana.errors import CarvanaError
from carvana.io import atomic_write_text


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
        atomic_write_text(cache, _csv(("car", "area"), sorted(areas.items())))
    return dict(areas)


def write(path: str | Path, folds: Mapping[str, int]) -> Path:
    """``folds.csv`` with columns car, fold, sorted by car."""
    return atomic_write_text(path, _csv(("car", "fold"), sorted(folds.items())))


def read(path: str | Path) -> dict[str, int]:
    with open(path, newline="") as f:
        return {row["car"]: int(row["fold"]) for row in csv.DictReader(f)}


def _csv(header: tuple[str, ...], rows: Sequence[tuple]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
