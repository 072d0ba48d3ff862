"""Car-grouped, area-stratified folds."""

from collections import Counter

import numpy as np
import pytest

from carvana.data import folds
from carvana.data.kaggle import train_samples
from carvana.errors import CarvanaError
from carvana.runs import read_folds, write_folds


def test_318_cars_give_64_64_64_63_63_and_balanced_areas():
    rng = np.random.default_rng(0)
    areas = {f"car{i:03d}": int(a) for i, a in enumerate(rng.integers(100_000, 900_000, size=318))}
    table = folds.assign(areas, 5)
    assert set(table) == set(areas)
    assert sorted(Counter(table.values()).values(), reverse=True) == [64, 64, 64, 63, 63]
    sums = np.array([sum(areas[c] for c in table if table[c] == k) / 64 for k in range(5)])
    means = np.array([np.mean([areas[c] for c in table if table[c] == k]) for k in range(5)])
    assert means.max() - means.min() < 0.02 * means.mean()
    assert sums.std() < 0.05 * sums.mean()


def test_split_is_deterministic_whatever_the_input_order():
    rng = np.random.default_rng(1)
    areas = {f"c{i}": int(a) for i, a in enumerate(rng.integers(0, 10, size=50))}  # many ties
    shuffled = dict(sorted(areas.items(), key=lambda kv: rng.random()))
    assert folds.assign(areas, 5) == folds.assign(shuffled, 5)


def test_bad_fold_counts_are_named():
    with pytest.raises(CarvanaError, match="n_folds=1"):
        folds.assign({"a": 1, "b": 2}, 1)
    with pytest.raises(CarvanaError, match="n_folds=5"):
        folds.assign({"a": 1, "b": 2}, 5)


def test_real_small512_no_car_in_two_folds(shared_small512, tmp_path):
    samples = train_samples(shared_small512)
    areas = folds.car_areas(samples, cache_dir=tmp_path)
    table = folds.assign(areas, 5)
    fold_of_image = {s.image_id: table[s.car] for s in samples}
    cars_per_fold = [{s.car for s in samples if fold_of_image[s.image_id] == k} for k in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not cars_per_fold[i] & cars_per_fold[j]
    assert sorted(len(c) for c in cars_per_fold) == [50, 51, 51, 51, 51]
    assert all(sum(1 for s in samples if s.car == car) == 16 for car in cars_per_fold[0])
    # the cache answers the same without decoding again
    assert folds.car_areas(samples, cache_dir=tmp_path) == areas
    write_folds(tmp_path / "folds.csv", table)
    assert read_folds(tmp_path / "folds.csv") == table
