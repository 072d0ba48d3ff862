"""The second level reads only out-of-fold maps: each map comes from the run that never saw its car."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from runs import REPO, train

from carvana.data import folds, synthetic
from carvana.data.datamodule import CarvanaDataModule
from carvana.data.geometry import Geometry
from carvana.data.kaggle import train_samples
from carvana.errors import CarvanaError
from carvana.runs import write_folds


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
            write_folds(run / "folds.csv", table)
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
    write_folds(path, moved)
    try:
        with pytest.raises(CarvanaError, match=f"{path} splits the cars differently"):
            datamodule(root, sources, tmp).setup()
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_second_level_end_to_end(tmp_path):
    """Two first-level models on 2 folds (OOF maps written at the end of each fold), the refiner on their
    maps, its comparison with their plain mean, and a test-set prediction from their test maps."""
    tiny = ["n_folds=2", "data.synthetic.cars=6", "trainer.max_epochs=2", "logger=none"]
    first = train(tmp_path, "-m", "model=linknet18,unet_resnet34", "fold=0,1", *tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    outputs = tmp_path / "outputs"
    sources = [outputs / "linknet18", outputs / "unet_resnet34"]
    refined = train(
        tmp_path, "-m", "+experiment=refine", "fold=0,1", *tiny,
        f"data.sources=[{sources[0]},{sources[1]}]",
    )  # fmt: skip
    assert refined.returncode == 0, refined.stderr[-3000:]
    for fold in (0, 1):
        assert (outputs / "refine" / f"fold{fold}" / "oof_score.json").is_file()

    compare = subprocess.run(
        [sys.executable, "-m", "carvana", "refine", str(outputs / "refine"), "--sources", *map(str, sources)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert compare.returncode == 0, compare.stderr
    scores = dict(line.split(": ") for line in compare.stdout.splitlines())
    assert set(scores) == {"mean of sources (pooled OOF Dice)", "refine (pooled OOF Dice)"}
    assert all(0 < float(value) <= 1 for value in scores.values())
    print(compare.stdout)

    env = {**os.environ, "CARVANA_CACHE": str(tmp_path / "cache")}
    for source in sources:
        done = subprocess.run(
            [sys.executable, "predict.py", f"checkpoints={source}/fold*/checkpoints/best.ckpt", "trainer=cpu",
             f"out_dir={tmp_path / 'predictions' / source.name}", "submission=null"],
            capture_output=True, text=True, cwd=REPO, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    maps = [tmp_path / "predictions" / source.name for source in sources]
    done = subprocess.run(
        [sys.executable, "predict.py", f"checkpoints={outputs}/refine/fold*/checkpoints/best.ckpt",
         "trainer=cpu",
         f"out_dir={tmp_path / 'predictions' / 'refine'}", f"data.sources=[{maps[0]},{maps[1]}]"],
        capture_output=True, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "predictions" / "refine" / "submission.csv").is_file()
