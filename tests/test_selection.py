"""carvana select on constructed out-of-fold maps in run folders: weights, threshold, steps, files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carvana import runs
from carvana.data import synthetic
from carvana.data.kaggle import read_mask, train_samples
from carvana.errors import CarvanaError
from carvana.evaluate import selection
from carvana.metrics import dice
from carvana.submit import ensemble, submission
from tests.conftest import REPO

FOLDS = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny synthetic Kaggle-layout folder: 4 cars, 64 images of 40x32."""
    return synthetic.generate(
        tmp_path_factory.mktemp("data") / "root", cars=4, test_cars=1, width=40, height=32
    )


def experiment(base: Path, name: str, root: Path, make_map, table: dict[str, int] | None = None) -> Path:
    """An experiment folder as training leaves it, ``make_map(truth, rng)`` giving each OOF map."""
    samples = train_samples(root)
    table = table or {car: index % FOLDS for index, car in enumerate(sorted({s.car for s in samples}))}
    rng = np.random.default_rng(len(name))
    for fold in range(FOLDS):
        run = runs.fold_dir(base / name, fold)
        (run / runs.RUN_CONFIG).parent.mkdir(parents=True)
        (run / runs.RUN_CONFIG).write_text(
            json.dumps({"fold": fold, "data": {"root": str(root), "images_dir": "train"}})
        )
        runs.write_folds(run / runs.FOLDS, table)
        for sample in samples:
            if table[sample.car] == fold:
                truth = read_mask(sample.mask) != 0
                runs.write_map(run / runs.OOF, sample.image_id, make_map(truth, rng))
    return base / name


def noisy(scale: float):
    """Maps of the truth, blurred by noise of ``scale`` (0: the truth itself)."""

    def make(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        value = 255.0 * truth + rng.normal(0, scale * 255, truth.shape)
        return np.clip(value, 0, 255).astype(np.uint8)

    return make


def pooled_dice(experiments: list[Path], weights: list[float], cutoff: int) -> float:
    """Brute force: every image's weighted mean map > cutoff, scored against its mask."""
    samples, maps = selection.oof_images(experiments)
    scores = []
    for sample, paths in zip(samples, maps, strict=True):
        mean = sum(w * runs.read_map(p).astype(np.float64) for w, p in zip(weights, paths, strict=True))
        scores.append(dice(np.floor(mean + 0.5) > cutoff, read_mask(sample.mask)))
    return float(np.mean(scores))


def test_selection_picks_the_better_source_and_never_loses_to_the_mean(root, tmp_path):
    good = experiment(tmp_path, "good", root, noisy(0.3))
    bad = experiment(tmp_path, "bad", root, noisy(0.9))
    record = selection.select([bad, good], steps=5, workers=1)
    assert record["single_dice"]["good"] > record["single_dice"]["bad"]
    assert record["weights"][1] > record["weights"][0]
    scores = record["oof_dice"]
    assert scores["selected"] >= max(scores["plain_mean"], scores["best_single"])
    assert scores["threshold"] >= scores["selected"] and scores["postprocess"] >= scores["threshold"]
    assert scores["plain_mean"] == pytest.approx(pooled_dice([bad, good], [0.5, 0.5], 127))
    cutoff = int(record["threshold"] * 255)
    assert scores["threshold"] == pytest.approx(pooled_dice([bad, good], record["weights"], cutoff))


def test_threshold_search_finds_the_constructed_optimum(root, tmp_path):
    """Car at 100, background at 60: 0.5 finds no car at all; every cutoff from 60 to 99 is perfect."""
    source = experiment(tmp_path, "dim", root, lambda truth, rng: np.where(truth, 100, 60).astype(np.uint8))
    record = selection.select([source], steps=1, workers=1)
    assert record["oof_dice"]["selected"] < 0.5
    assert 60 <= int(record["threshold"] * 255) <= 99
    assert record["oof_dice"]["threshold"] == 1.0


def test_every_cutoff_of_the_histograms_equals_brute_force(root, tmp_path):
    a = experiment(tmp_path, "a", root, noisy(0.5))
    b = experiment(tmp_path, "b", root, noisy(0.7))
    samples, maps = selection.oof_images([a, b])
    job = (str(samples[0].mask), tuple(map(str, maps[0])))
    curve = selection._cutoffs(job, (2, 1))
    truth = read_mask(samples[0].mask)
    total = 2 * runs.read_map(maps[0][0]).astype(int) + runs.read_map(maps[0][1]).astype(int)
    for cutoff in (0, 50, 127, 200, 254):
        mean = (2 * total + 3) // 6  # the mean of 3 maps, rounded half up
        assert curve[cutoff] == pytest.approx(dice(mean > cutoff, truth))


def test_a_speck_everywhere_turns_largest_component_on(root, tmp_path):
    def speck(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        prob = np.where(truth, 255, 0).astype(np.uint8)
        prob[0, 0] = 255  # never the car in the synthetic views: a false positive in every image
        return prob

    record = selection.select([experiment(tmp_path, "speck", root, speck)], steps=1, workers=1)
    assert record["postprocess"] == {"largest_component": True, "min_size": 0, "fill_holes": False}
    assert record["oof_dice"]["postprocess"] > record["oof_dice"]["threshold"]


def test_sources_split_differently_are_refused(root, tmp_path):
    a = experiment(tmp_path, "a", root, noisy(0.5))
    cars = sorted({s.car for s in train_samples(root)})
    b = experiment(
        tmp_path, "b", root, noisy(0.5), {car: (index + 1) % FOLDS for index, car in enumerate(cars)}
    )
    with pytest.raises(CarvanaError, match="splits the cars differently"):
        selection.select([a, b], workers=1)


def test_cli_writes_the_file_that_ensemble_and_submission_read(root, tmp_path, capsys):
    good = experiment(tmp_path, "good", root, noisy(0.3))
    bad = experiment(tmp_path, "bad", root, noisy(0.9))
    out = tmp_path / runs.SELECTION
    done = subprocess.run(
        [sys.executable, "-m", "carvana", "select", str(out), str(bad), str(good), "--steps", "3",
         "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "selected weights" in done.stdout and out.is_file()
    record = runs.read_selection(out)
    assert ensemble.selection_weights(out, 2) == pytest.approx(record["weights"])
    with pytest.raises(CarvanaError, match="weighs 2 experiments"):
        ensemble.selection_weights(out, 3)
    # The OOF folders stand in for test predictions: the submission takes threshold and weights from the file.
    sample = tmp_path / "sample_submission.csv"
    ids = runs.map_ids(runs.fold_dir(good, 0) / runs.OOF)
    sample.write_text("img,rle_mask\n" + "".join(f"{i}.jpg,\n" for i in ids))
    folders = [str(runs.fold_dir(e, 0) / runs.OOF) for e in (bad, good)]
    written = tmp_path / "submission.csv"
    common = ["write", *folders, "--sample", str(sample), "--selection", str(out), "--workers", "1"]
    assert submission.main([*common, "--out", str(written)]) == 0
    assert len(written.read_text().splitlines()) == len(ids) + 1
    assert submission.main([*common, "--out", str(tmp_path / "two.csv"), "--threshold", "0.4"]) == 2
    assert "drop --threshold" in capsys.readouterr().err and not (tmp_path / "two.csv").exists()


@pytest.mark.parametrize(
    "text, fault",
    [
        ("[1, 2]", "no mapping"),
        ("experiments: [a]\nweights: [1]\nthreshold: 0.5\n", "no 'postprocess' entry"),
        ("experiments: [a, b]\nweights: [1]\nthreshold: 0.5\npostprocess: {}\n", "weights must be"),
        (
            "experiments: [a]\nweights: [1]\nthreshold: 1.5\n"
            "postprocess: {largest_component: true, min_size: 0, fill_holes: false}\n",
            "threshold must be",
        ),
        ("experiments: [a]\nweights: [1]\nthreshold: 0.5\npostprocess: {largest_component: 1}\n", "exactly"),
        ("experiments: !!python/object:os.system [a]\n", "unreadable"),
    ],
)
def test_a_bad_selection_file_is_one_error_naming_it(tmp_path, text, fault):
    path = tmp_path / runs.SELECTION
    path.write_text(text)
    with pytest.raises(CarvanaError, match=fault) as error:
        runs.read_selection(path)
    assert str(path) in str(error.value)
