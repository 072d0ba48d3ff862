"""carvana.submission on real masks turned into probability PNGs, and on the real sample submission."""

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana.errors import CarvanaError
from carvana.submit import ensemble, rle, submission
from tests.conftest import REPO

N_ROWS = 6


def flip_and_invert(mask: np.ndarray) -> np.ndarray:
    """A module-level postprocess (picklable for worker processes) whose effect is easy to predict."""
    return ~mask[:, ::-1]


@pytest.fixture(scope="module")
def case(tmp_path_factory, shared_full) -> tuple[Path, Path, list[str]]:
    """(prediction folder, sample csv, img ids): 6 real masks from different cars as noisy probabilities."""
    root = tmp_path_factory.mktemp("case")
    masks = sorted((shared_full / "train_masks").glob("*_mask.gif"))[::12][:N_ROWS]
    images = [p.name.replace("_mask.gif", ".jpg") for p in masks]
    assert len({img[:12] for img in images}) == N_ROWS
    rng = np.random.default_rng(0)
    pred = root / "pred"
    pred.mkdir()
    for mask_path, img in zip(masks, images, strict=True):
        mask = np.asarray(Image.open(mask_path))
        prob = np.where(mask == 1, rng.integers(140, 256, mask.shape), rng.integers(0, 116, mask.shape))
        prob[600:640] = rng.integers(0, 256, (40, mask.shape[1]))  # a band with every value, 127/128 included
        assert cv2.imwrite(str(pred / f"{img[:-4]}.png"), prob.astype(np.uint8))
    # Sample order differs from sorted order, as Kaggle's does.
    images = images[::-1]
    sample = root / "sample_submission.csv"
    sample.write_text("img,rle_mask\n" + "".join(f"{img},1 1\n" for img in images))
    return pred, sample, images


def expected_mask(pred: Path, img: str, threshold: float = 0.5) -> np.ndarray:
    png = np.asarray(Image.open(pred / f"{img[:-4]}.png"))
    return png.astype(np.float64) / 255 > threshold


def read_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        lines = f.read().split("\n")
    assert lines[0] == "img,rle_mask" and lines[-1] == ""
    return [line.split(",") for line in lines[1:-1]]


def test_write_then_check(case, tmp_path):
    pred, sample, images = case
    out = submission.write(pred, sample, tmp_path / "submission.csv", workers=1)
    assert out == tmp_path / "submission.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]
    assert submission.check(out, sample) == N_ROWS
    rows = read_rows(out)
    assert [img for img, _ in rows] == images
    for img, encoded in rows:
        assert np.array_equal(rle.decode(encoded), expected_mask(pred, img)), img


@pytest.mark.parametrize("workers", [1, 2])
def test_threshold_and_postprocess(case, tmp_path, workers):
    pred, sample, _ = case
    out = submission.write(
        pred, sample, tmp_path / "s.csv", threshold=0.3, postprocess=flip_and_invert, workers=workers
    )
    for img, encoded in read_rows(out):
        assert np.array_equal(rle.decode(encoded), ~expected_mask(pred, img, 0.3)[:, ::-1]), img


def test_workers_give_the_same_bytes(case, tmp_path):
    pred, sample, _ = case
    for name in ("s.csv", "s.csv.gz"):
        compress = name.endswith(".gz")
        one = submission.write(pred, sample, tmp_path / "1" / name, workers=1, compress=compress)
        two = submission.write(pred, sample, tmp_path / "2" / name, workers=2, compress=compress)
        every_cpu = submission.write(pred, sample, tmp_path / "0" / name, workers=0, compress=compress)
        assert one.read_bytes() == two.read_bytes() == every_cpu.read_bytes()


@pytest.mark.parametrize(("weights", "vote"), [(None, False), ([1, 3, 0], False), (None, True)])
def test_several_folders_give_the_rows_of_their_ensemble(case, tmp_path, weights, vote):
    """Rows straight from K folders equal those of carvana.ensemble.average's folder, without it."""
    pred, sample, _ = case
    rng = np.random.default_rng(1)
    folders = [pred]
    for k in (1, 2):
        folder = tmp_path / f"model{k}"
        folder.mkdir()
        for png in pred.glob("*.png"):
            noise = rng.integers(-40, 41, (1280, 1918))
            noisy = np.clip(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) + noise, 0, 255).astype(np.uint8)
            assert cv2.imwrite(str(folder / png.name), noisy)
        folders.append(folder)
    averaged = ensemble.average(folders, tmp_path / "mean", weights=weights, vote=vote, workers=1)
    direct = submission.write(folders, sample, tmp_path / "direct.csv", weights=weights, vote=vote, workers=2)
    two_steps = submission.write(averaged, sample, tmp_path / "two_steps.csv", workers=1)
    assert direct.read_text() == two_steps.read_text()
    with pytest.raises(CarvanaError, match="2 weights for 3 input folders"):
        submission.write(folders, sample, tmp_path / "bad.csv", weights=[1, 2])


def test_gzip_round_trips(case, tmp_path):
    pred, sample, _ = case
    plain = submission.write(pred, sample, tmp_path / "s.csv", workers=1)
    packed = submission.write(pred, sample, tmp_path / "s.csv.gz", workers=1, compress=True)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert submission.check(packed, sample) == N_ROWS
    with pytest.raises(CarvanaError, match=r"\.gz"):
        submission.write(pred, sample, tmp_path / "t.csv", compress=True)


@pytest.fixture
def sample_with_missing(case, tmp_path) -> tuple[Path, list[str]]:
    """The case's sample with two rows that have no PNG, the first of them in second position."""
    _, _, images = case
    listed = [images[0], "ffffffffffff_01.jpg", *images[1:4], "eeeeeeeeeeee_16.jpg", *images[4:]]
    sample = tmp_path / "sample_missing.csv"
    sample.write_text("img,rle_mask\n" + "".join(f"{img},1 1\n" for img in listed))
    return sample, listed


def test_missing_png_is_an_error_and_leaves_nothing(case, tmp_path, sample_with_missing):
    pred, _, _ = case
    sample, _ = sample_with_missing
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CarvanaError) as info:
        submission.write(pred, sample, out_dir / "s.csv", workers=1)
    message = str(info.value)
    assert "\n" not in message
    assert "2 of 8" in message and "ffffffffffff_01" in message and str(pred) in message
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_midway_removes_the_temp_file(case, tmp_path, workers):
    pred, sample, _ = case
    broken = tmp_path / "pred"
    shutil.copytree(pred, broken)
    victim = sorted(broken.iterdir())[3]
    victim.write_bytes(b"not a png")
    (tmp_path / "out").mkdir()
    with pytest.raises(CarvanaError, match=victim.name):
        submission.write(broken, sample, tmp_path / "out" / "s.csv", workers=workers)
    assert list((tmp_path / "out").iterdir()) == []


def test_wrong_png_size_and_bad_postprocess(case, tmp_path):
    pred, sample, _ = case
    with pytest.raises(CarvanaError, match="expected 1920x1280"):
        submission.write(pred, sample, tmp_path / "s.csv", shape=(1280, 1920), workers=1)
    with pytest.raises(CarvanaError, match="postprocess"):
        submission.write(pred, sample, tmp_path / "s.csv", postprocess=np.transpose, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_subset_writes_present_rows_in_sample_order(case, tmp_path, sample_with_missing):
    pred, _, _ = case
    sample, listed = sample_with_missing
    out = submission.write(pred, sample, tmp_path / "s.csv", subset=True, workers=2)
    rows = read_rows(out)
    assert [img for img, _ in rows] == [img for img in listed if img[:4] not in ("ffff", "eeee")]
    for img, encoded in rows:
        assert np.array_equal(rle.decode(encoded), expected_mask(pred, img)), img


def test_subset_with_real_test_names(shared_full, tmp_path):
    tests = sorted(p.name for p in (shared_full / "test").glob("*.jpg"))
    chosen = [tests[9], tests[2]]
    rng = np.random.default_rng(1)
    for img in chosen:
        cv2.imwrite(str(tmp_path / f"{img[:-4]}.png"), rng.integers(0, 256, (1280, 1918), dtype=np.uint8))
    out = submission.write(
        tmp_path,
        shared_full / "sample_submission.csv",
        tmp_path / "out" / "s.csv",
        subset=True,
        workers=1,
        shape=(1280, 1918),
    )
    assert [img for img, _ in read_rows(out)] == [tests[2], tests[9]]


def write_rows(path: Path, rows: list[tuple[str, str]], header: str = "img,rle_mask") -> Path:
    path.write_text(header + "\n" + "".join(f"{img},{encoded}\n" for img, encoded in rows))
    return path


def test_check_rejects_bad_files(case, tmp_path):
    pred, sample, images = case
    rows = [tuple(row) for row in read_rows(submission.write(pred, sample, tmp_path / "good.csv", workers=1))]
    bad = {
        "header": (write_rows(tmp_path / "h.csv", rows, "image,rle"), "header"),
        "missing row": (write_rows(tmp_path / "m.csv", rows[:2] + rows[3:]), f"row 3 .*{images[2]}"),
        "missing last": (write_rows(tmp_path / "l.csv", rows[:-1]), f"5 rows.*row 6 .*{images[5]}"),
        "extra row": (write_rows(tmp_path / "x.csv", [*rows, rows[0]]), "row 7"),
        "swapped": (write_rows(tmp_path / "w.csv", [rows[0], rows[2], rows[1], *rows[3:]]), "row 2 "),
        "bad rle": (
            write_rows(tmp_path / "r.csv", [*rows[:3], (images[3], "5 0"), *rows[4:]]),
            f"row 4 .*{images[3]}.*length",
        ),
        "no column": (tmp_path / "c.csv", "row 1 .*rle_mask"),
    }
    (tmp_path / "c.csv").write_text("img,rle_mask\n" + "\n".join(images) + "\n")
    for what, (path, pattern) in bad.items():
        with pytest.raises(CarvanaError, match=pattern) as info:
            submission.check(path, sample)
        assert "\n" not in str(info.value), what
    with pytest.raises(CarvanaError, match="past"):
        submission.check(tmp_path / "good.csv", sample, shape=(100, 100))
    with pytest.raises(CarvanaError, match="cannot read"):
        submission.check(tmp_path / "absent.csv", sample)


def test_read_sample_rejects_a_wrong_header(tmp_path):
    path = write_rows(tmp_path / "sample.csv", [("a.jpg", "1 1")], "id,mask")
    with pytest.raises(CarvanaError, match=r"sample\.csv"):
        submission.read_sample(path)


def test_real_sample_submission(shared_full):
    sample = shared_full / "sample_submission.csv"
    images = submission.read_sample(sample)
    assert len(images) == 100_064 == len(set(images))
    assert images[:2] == ["0004d4463b50_01.jpg", "0004d4463b50_02.jpg"]
    assert all(img.endswith(".jpg") for img in images)
    assert {p.name for p in (shared_full / "test").glob("*.jpg")} <= set(images)
    assert submission.check(sample, sample) == 100_064  # every row is "1 1"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carvana", "submission", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli(case, tmp_path):
    pred, sample, _ = case
    out = tmp_path / "cli" / "s.csv.gz"
    done = run_cli("write", str(pred), "--sample", str(sample), "--out", str(out), "--gzip", "--workers", "2")
    assert done.returncode == 0, done.stderr
    reference = submission.write(pred, sample, tmp_path / "api" / "s.csv.gz", workers=1, compress=True)
    assert out.read_bytes() == reference.read_bytes()

    done = run_cli("check", str(out), "--sample", str(sample))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"s.csv.gz: OK, {N_ROWS} rows\n"

    bad = write_rows(tmp_path / "bad.csv", [(img, "1 1") for img in submission.read_sample(sample)[:-1]])
    done = run_cli("check", str(bad), "--sample", str(sample), "--height", "1280", "--width", "1918")
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr

    done = run_cli(
        "write", str(pred), "--sample", str(sample), "--out", str(tmp_path / "x.csv"), "--threshold", "1.5"
    )
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_unwritable_output_is_a_carvana_error(case, tmp_path):
    pred, sample, _ = case
    (tmp_path / "taken").mkdir()
    with pytest.raises(CarvanaError, match="cannot write"):
        submission.write(pred, sample, tmp_path / "taken", workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
