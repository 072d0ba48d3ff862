"""The second level reads only out-of-fold maps: each map comes from the run that never saw its car."""

import cv2
import numpy as np
import pytest

from carvana import folds, synthetic
from carvana.datamodule import CarvanaDataModule
from carvana.dataset import train_samples
from carvana.errors import CarvanaError
from carvana.geometry import Geometry


def fake_sources(root, tmp, n_folds=5):
    """Two first-level 'experiments' laid out like training runs: fold<j>/folds.csv and, as the OOF step
    writes them, maps for fold j's validation cars only. A map's value says which run and source made it."""
    samples = train_samples(root)
    table = folds.assign(folds.car_areas(samples), n_folds)
    sources = [tmp / "linknet34", tmp / "unet_resnet34"]
    for s, source in enumerate(sources):
        for fold in range(n_folds):
            run = source / f"fold{fold}"
            (run / "oof").mkdir(parents=True)
            folds.write(run / "folds.csv", table)
            for sample in samples:
                if table[sample.car] == fold:
                    value = 100 + 10 * fold + s
                    cv2.imwrite(
                        str(run / "oof" / f"{sample.image_id}.png"), np.full((64, 96), value, np.uint8)
                    )
    return sources, table


def datamodule(root, sources, tmp, fold=1):
    return CarvanaDataModule(
        root=str(root), fold=fold, n_folds=5, geometry=Geometry("pad"), augment=None, cache_dir=str(tmp),
        sources=[str(s) for s in sources], num_workers=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine")
    root = synthetic.generate(tmp / "data", cars=5, test_cars=0, width=96, height=64)
    sources, table = fake_sources(root, tmp)
    return tmp, root, sources, table


def test_every_map_is_out_of_fold_for_its_car(layout):
    tmp, root, sources, table = layout
    dm = datamodule(root, sources, tmp, fold=1)
    dm.setup()
    for dataset in (dm.train_set, dm.val_set):
        for index, sample in enumerate(dataset.samples):
            image = dataset[index]["image"].numpy()
            assert image.shape == (64, 96, 5)
            own_fold = table[sample.car]
            assert [int(image[0, 0, 3 + s]) for s in range(2)] == [100 + 10 * own_fold + s for s in range(2)]
    assert {table[s.car] for s in dm.train_set.samples} == {0, 2, 3, 4}
    assert {table[s.car] for s in dm.val_set.samples} == {1}


def test_a_missing_oof_map_is_named(layout, tmp_path):
    tmp, root, sources, _ = layout
    victim = next(p for p in sorted((sources[1] / "fold3" / "oof").glob("*.png")))
    victim.rename(tmp_path / victim.name)
    try:
        with pytest.raises(CarvanaError, match=f"{victim}: no out-of-fold map"):
            datamodule(root, sources, tmp).setup()
    finally:
        (tmp_path / victim.name).rename(victim)


def test_sources_split_differently_are_refused(layout, tmp_path):
    tmp, root, sources, table = layout
    moved = dict(table)
    car = sorted(moved)[0]
    moved[car] = (moved[car] + 1) % 5
    path = sources[0] / "fold2" / "folds.csv"
    original = path.read_text()
    folds.write(path, moved)
    try:
        with pytest.raises(CarvanaError, match=f"{path} splits the cars differently"):
            datamodule(root, sources, tmp).setup()
    finally:
        path.write_text(original)
