"""``carvana data check``: one line naming the file for each kind of problem, on real JPEGs and GIFs."""

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana.data.check import main
from carvana.data.datamodule import CarvanaDataModule
from carvana.data.geometry import Geometry
from carvana.errors import CarvanaError

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["aaaaaaaaaaaa_01", "aaaaaaaaaaaa_02", "bbbbbbbbbbbb_01", "bbbbbbbbbbbb_02"]
TEST = ["cccccccccccc_01", "cccccccccccc_02"]
HEIGHT, WIDTH = 48, 64


def write_jpeg(path: Path, height: int = HEIGHT, width: int = WIDTH) -> None:
    image = np.random.default_rng(len(path.name)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def write_gif(path: Path, values: tuple[int, int] = (0, 1), height: int = HEIGHT, width: int = WIDTH) -> None:
    """A one-frame palette GIF, as Kaggle's masks: a rectangle of ``values[1]`` on ``values[0]``."""
    mask = np.full((height, width), values[0], np.uint8)
    mask[height // 4 : -height // 4, width // 4 : -width // 4] = values[1]
    gif = Image.frombytes("P", (width, height), mask.tobytes())
    gif.putpalette([0, 0, 0] * 255 + [255, 255, 255])
    gif.save(path, format="GIF", optimize=False)  # optimize would renumber the values to 0 and 1


@pytest.fixture
def kaggle(tmp_path) -> Path:
    """2 cars x 2 angles of 64x48 pairs, 2 test images, the two CSVs; one sample row has no image."""
    root = tmp_path / "kaggle"
    for sub in ("train", "train_masks", "test"):
        (root / sub).mkdir(parents=True)
    for image_id in TRAIN:
        write_jpeg(root / "train" / f"{image_id}.jpg")
        write_gif(root / "train_masks" / f"{image_id}_mask.gif")
    for image_id in TEST:
        write_jpeg(root / "test" / f"{image_id}.jpg")
    rows = [f"{image_id}.jpg,1 1" for image_id in [*TEST, "cccccccccccc_03"]]
    (root / "sample_submission.csv").write_text("\n".join(["img,rle_mask", *rows]) + "\n")
    cars = ['"aaaaaaaaaaaa","2014"', '"bbbbbbbbbbbb","2015"', '"cccccccccccc","2016"']
    (root / "metadata.csv").write_text("\n".join(['"id","year"', *cars]) + "\n")
    return root


def check(root: Path, capsys, *args: str) -> tuple[int, list[str]]:
    """Exit status and stdout lines of ``carvana data check root`` run in this process."""
    code = main(["check", str(root), "--workers", "1", *args])
    return code, capsys.readouterr().out.splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("problem: ")]


def test_a_clean_folder_exits_0_and_says_what_it_checked(kaggle, capsys):
    code, lines = check(kaggle, capsys)
    assert code == 0 and not problems(lines)
    assert lines[-1].startswith(
        f"{kaggle}: 4 train pairs of 2 cars, 2 test images, 3 sample_submission.csv rows"
    )
    assert "sizes 64x48 x6" in lines[-1] and lines[-1].endswith("; 0 problems")
    assert f"info: {kaggle / 'train'}: 2 of 2 cars lack some of the 16 angles" in lines
    assert any(line.startswith("info: ") and "1 of 3 rows have no image" in line for line in lines)


def image(root: Path, i: int = 0) -> Path:
    return root / "train" / f"{TRAIN[i]}.jpg"


def mask(root: Path, i: int = 0) -> Path:
    return root / "train_masks" / f"{TRAIN[i]}_mask.gif"


def overwrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def cut(path: Path, keep: Callable[[int], int]) -> Path:
    return overwrite(path, path.read_bytes()[: keep(path.stat().st_size)])


# Each breaks the clean folder one way and returns the file its problem line must name.


def image_without_mask(root: Path) -> Path:
    mask(root, 1).unlink()
    return image(root, 1)


def mask_without_image(root: Path) -> Path:
    image(root, 2).unlink()
    return mask(root, 2)


def second_spelling_of_an_id(root: Path) -> Path:
    write_jpeg(root / "train" / f"{TRAIN[1]}.JPG")
    return root / "train" / f"{TRAIN[1]}.JPG"


def train_id_in_test(root: Path) -> Path:
    shutil.copy(image(root), root / "test")
    sample = root / "sample_submission.csv"
    sample.write_text(sample.read_text() + f"{image(root).name},1 1\n")
    return root / "test" / image(root).name


def unlisted_test_image(root: Path) -> Path:
    write_jpeg(root / "test" / "cccccccccccc_09.jpg")
    return root / "test" / "cccccccccccc_09.jpg"


def sample_row_twice(root: Path) -> Path:
    sample = root / "sample_submission.csv"
    sample.write_text(sample.read_text() + f"{TEST[0]}.jpg,1 1\n")
    return sample


def mask_of_another_size(root: Path) -> Path:
    write_gif(mask(root), height=HEIGHT // 2)
    return mask(root)


def grey_mask(root: Path) -> Path:
    write_gif(mask(root), values=(0, 128))
    return mask(root)


CASES = {
    "image without a mask": (image_without_mask, "no mask"),
    "mask without an image": (mask_without_image, "no image"),
    "corrupt JPEG": (lambda root: overwrite(image(root), b"garbage" * 50), "corrupt JPEG"),
    "truncated JPEG": (lambda root: cut(image(root), lambda n: n // 2), "truncated JPEG"),
    "corrupt test JPEG": (
        lambda root: overwrite(root / "test" / f"{TEST[1]}.jpg", b"garbage"),
        "corrupt JPEG",
    ),
    "unreadable GIF": (lambda root: overwrite(mask(root), b"garbage" * 50), "unreadable GIF"),
    "truncated GIF": (lambda root: cut(mask(root), lambda n: n * 3 // 4), "truncated GIF"),
    "GIF without its trailer": (lambda root: cut(mask(root), lambda n: n - 1), "truncated GIF"),
    "mask of another size": (mask_of_another_size, "mask is 64x24, its image"),
    "mask values": (grey_mask, "mask values 0, 128"),
    "second spelling of an id": (second_spelling_of_an_id, f"duplicate image id {TRAIN[1]}"),
    "id in train and test": (train_id_in_test, f"duplicate image id {TRAIN[0]}"),
    "test image not in the sample": (unlisted_test_image, "not listed in"),
    "sample row twice": (sample_row_twice, f"{TEST[0]}.jpg is listed 2 times"),
    "sample header": (lambda root: overwrite(root / "sample_submission.csv", b"id,mask\n"), "header"),
    "metadata that does not parse": (
        lambda root: overwrite(root / "metadata.csv", b'"id\n"x'),
        "does not parse",
    ),
    "metadata without id": (
        lambda root: overwrite(root / "metadata.csv", b"car,year\nx,1\n"),
        "no id column",
    ),
    "ragged metadata": (lambda root: overwrite(root / "metadata.csv", b"id,year\nx,1\ny\n"), "line 3"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_problem_is_one_line_naming_the_file(case, kaggle, capsys):
    breaker, words = CASES[case]
    named = breaker(kaggle)
    code, lines = check(kaggle, capsys)
    assert code == 1
    assert len(problems(lines)) == 1, lines
    assert problems(lines)[0].startswith(f"problem: {named}: ") and words in problems(lines)[0], lines
    assert lines[-1].endswith("; 1 problem")


def test_masks_in_0_and_255_are_accepted_and_said_so(kaggle, capsys):
    for i in range(len(TRAIN)):
        write_gif(mask(kaggle, i), values=(0, 255))
    code, lines = check(kaggle, capsys)
    assert code == 0 and "info: 4 masks use {0, 255} rather than {0, 1} (accepted: read as {0, 1})" in lines


def test_a_subset_without_test_or_csvs_is_clean(kaggle, capsys):
    shutil.rmtree(kaggle / "test")
    (kaggle / "sample_submission.csv").unlink()
    (kaggle / "metadata.csv").unlink()
    code, lines = check(kaggle, capsys)
    assert code == 0, lines
    assert f"info: {kaggle / 'test'}: absent, no test images" in lines
    assert any(line.startswith(f"info: {kaggle / 'metadata.csv'}: absent") for line in lines)


def test_train_hq_is_checked_with_images_dir(kaggle, capsys):
    (kaggle / "train").rename(kaggle / "train_hq")
    code, lines = check(kaggle, capsys)
    assert code == 1 and f"problem: {kaggle / 'train'}: folder not found" in problems(lines)[0]
    code, lines = check(kaggle, capsys, "--images-dir", "train_hq")
    assert code == 0, lines


def test_the_real_samples_are_clean_with_information(shared_full, capsys):
    code = main(["check", str(shared_full), "--workers", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and not problems(lines), lines
    assert "72 train pairs of 19 cars, 13 test images, 100064 sample_submission.csv rows" in lines[-1]
    assert "6572 metadata.csv cars; sizes 1918x1280 x85" in lines[-1]
    assert any("100051 of 100064 rows have no image" in line for line in lines if line.startswith("info: "))


def test_the_command_reports_problems_and_a_missing_folder_without_traceback(kaggle):
    mask(kaggle).unlink()
    done = subprocess.run(
        [sys.executable, "-m", "carvana", "data", "check", str(kaggle), "--workers", "2"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"problem: {image(kaggle)}: no mask {mask(kaggle)}" in done.stdout.splitlines()
    missing = kaggle / "nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "carvana.data", "check", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: {missing}: no such folder (a Kaggle-layout folder holds train/, train_masks/)"
    ]


def test_training_reports_an_orphan_mask_before_its_first_step(kaggle, tmp_path):
    image(kaggle, 3).unlink()
    datamodule = CarvanaDataModule(
        str(kaggle), fold=0, n_folds=2, geometry=Geometry(), augment=None, cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(CarvanaError, match="1 problem with its file names") as error:
        datamodule.setup("fit")
    assert f"{mask(kaggle, 3)}: no image {image(kaggle, 3)}" in str(error.value)
