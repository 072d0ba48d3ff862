"""The embedded synthetic dataset: Kaggle's layout on disk, views that change with the angle, determinism,
and the atomic, idempotent cache that the data module relies on."""

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana.data import synthetic
from carvana.errors import CarvanaError

W, H = 96, 64
ANGLES = [f"{a:02d}" for a in range(1, 17)]
TINY = {"cars": 1, "test_cars": 1, "width": 64, "height": 48}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    assert synthetic.generate(root, cars=3, test_cars=1, width=W, height=H, seed=7) == root
    return root


def car_ids(folder: Path) -> set[str]:
    return {p.name.rsplit("_", 1)[0] for p in folder.iterdir()}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mask(root: Path, car: str, angle: str) -> np.ndarray:
    return np.array(Image.open(root / "train_masks" / f"{car}_{angle}_mask.gif"))


def test_kaggle_layout(small):
    train, test = car_ids(small / "train"), car_ids(small / "test")
    assert len(train) == 3 and len(test) == 1 and not train & test
    assert all(re.fullmatch(r"[0-9a-f]{12}", car) for car in train | test)
    train_names = {f"{car}_{a}" for car in train for a in ANGLES}
    assert {p.name for p in (small / "train").iterdir()} == {f"{n}.jpg" for n in train_names}
    assert {p.name for p in (small / "train_masks").iterdir()} == {f"{n}_mask.gif" for n in train_names}
    assert {p.name for p in (small / "test").iterdir()} == {f"{car}_{a}.jpg" for car in test for a in ANGLES}
    assert {"metadata.csv", "sample_submission.csv"} <= {p.name for p in small.iterdir()}


def test_images_and_masks_decode_like_kaggle(small):
    for path in [*(small / "train").iterdir(), *(small / "test").iterdir()]:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (W, H)), path.name
    for path in (small / "train_masks").iterdir():
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size, image.n_frames) == ("GIF", "P", (W, H), 1), (
                path.name
            )
            values = np.array(image)
            palette = image.getpalette()[:6]
        assert set(np.unique(values)) <= {0, 1}, path.name
        assert 0 < values.sum() < values.size / 2, path.name  # a car, surrounded by background
        assert palette == [0, 0, 0, 255, 255, 255]


def test_silhouette_follows_the_turntable(small):
    for car in car_ids(small / "train"):
        front, side, back, other_side = (mask(small, car, a).sum() for a in ("01", "05", "09", "13"))
        assert side > 1.3 * front and other_side > 1.3 * back, car


def test_mask_matches_the_car_in_the_photo(small):
    for car in car_ids(small / "train"):
        for angle in ("01", "07"):
            image = np.asarray(Image.open(small / "train" / f"{car}_{angle}.jpg"), dtype=float)
            m = mask(small, car, angle).astype(bool)
            # The backdrop is a vertical gradient: model it by each row's median outside the mask.
            backdrop = np.array(
                [np.median(row[~inside], axis=0) for row, inside in zip(image, m, strict=True)]
            )
            distance = np.abs(image - backdrop[:, None]).sum(axis=2)
            assert distance[m].mean() > 3 * distance[~m].mean(), (car, angle)


def test_cars_have_their_own_colour(small):
    colours = []
    for car in sorted(car_ids(small / "train")):
        image = np.asarray(Image.open(small / "train" / f"{car}_05.jpg"), dtype=float)
        colours.append(np.median(image[mask(small, car, "05").astype(bool)], axis=0))
    for a, b in itertools.combinations(colours, 2):
        assert np.abs(a - b).max() > 15, (a, b)


def test_metadata_quotes_every_field(small):
    cars = car_ids(small / "train") | car_ids(small / "test")
    lines = (small / "metadata.csv").read_text().splitlines()
    assert lines[0] == '"id","year","make","model","trim1","trim2"'
    assert all(line.startswith('"') and line.endswith('"') and line.count('","') == 5 for line in lines)
    rows = list(csv.DictReader(lines))
    assert {row["id"] for row in rows} == cars and len(rows) == len(cars)
    for row in rows:
        assert 2000 <= int(row["year"]) <= 2020 and row["make"] and row["model"], row


def test_sample_submission_lists_the_test_images(small):
    names = sorted(p.name for p in (small / "test").iterdir())
    lines = (small / "sample_submission.csv").read_text().splitlines()
    assert lines == ["img,rle_mask"] + [f"{name},1 1" for name in names]


def test_same_seed_same_bytes_other_seed_other_cars(tmp_path):
    a = files(synthetic.generate(tmp_path / "a", **TINY, seed=3))
    b = files(synthetic.generate(tmp_path / "b", **TINY, seed=3))
    assert a.keys() == b.keys() and len(a) > 32
    assert all(a[name] == b[name] for name in a)
    other = synthetic.generate(tmp_path / "c", **TINY, seed=4)
    assert not car_ids(other / "train") & car_ids(tmp_path / "a" / "train")


def test_generate_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CarvanaError, match="not an empty folder"):
        synthetic.generate(tmp_path, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_ensure_is_idempotent(tmp_path):
    root = tmp_path / "cache" / "deep" / "synthetic"
    assert synthetic.ensure(root, **TINY) == root
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert len(before) > 32
    assert synthetic.ensure(root, **TINY) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert [p.name for p in root.parent.iterdir()] == ["synthetic"]  # no temporary folder left behind


def test_ensure_regenerates_when_the_parameters_change(tmp_path):
    root = tmp_path / "synthetic"
    synthetic.ensure(root, **TINY, seed=0)
    first = car_ids(root / "train")
    synthetic.ensure(root, **{**TINY, "cars": 2}, seed=1)
    assert len(list((root / "train").iterdir())) == 2 * 16
    assert not car_ids(root / "train") & first
    with Image.open(next((root / "test").iterdir())) as image:
        assert image.size == (TINY["width"], TINY["height"])
    synthetic.ensure(root, **{**TINY, "width": 80}, seed=1)
    with Image.open(next((root / "test").iterdir())) as image:
        assert image.size == (80, TINY["height"])
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


def test_ensure_never_deletes_a_folder_it_did_not_make(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "train").mkdir()
    with pytest.raises(CarvanaError, match=str(root)):
        synthetic.ensure(root, **TINY)
    assert [p.name for p in root.iterdir()] == ["train"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("width", 8),
        ("height", 31),
        ("cars", 0),
        ("test_cars", -1),
        ("seed", -1),
        ("width", "480"),
        ("cars", 2.0),
    ],
)
@pytest.mark.parametrize("entry", [synthetic.generate, synthetic.ensure])
def test_bad_settings_are_named(tmp_path, entry, setting, value):
    with pytest.raises(CarvanaError) as error:
        entry(tmp_path / "out", **{**TINY, setting: value})
    message = str(error.value)
    assert f"data.synthetic.{setting}=" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
