"""carvana.rle against the classic Kaggle encoder, real competition masks and Kaggle's own RLE rows."""

import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from bench.rle import kaggle_encode as classic  # the public Kaggle kernels' encoder, verbatim
from carvana.errors import CarvanaError
from carvana.submit import rle
from tests.conftest import SHARED

H, W = 1280, 1918
N = H * W


@pytest.fixture(scope="module")
def real_masks(shared_full) -> dict[str, np.ndarray]:
    """All real 1918x1280 train masks, decoded once for the module."""
    paths = sorted((shared_full / "train_masks").glob("*_mask.gif"))
    assert len(paths) == 72
    return {p.name: np.asarray(Image.open(p)) for p in paths}


@pytest.fixture(scope="module")
def kaggle_prefixes() -> list[tuple[str, str]]:
    with open(SHARED / "kaggle_train_masks_rle_prefixes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "rle_mask_prefix_truncated"]
    assert len(rows) == 4
    return [(img, prefix) for img, prefix in rows[1:]]


def test_real_masks_match_classic_and_round_trip(real_masks):
    for name, mask in real_masks.items():
        assert mask.shape == (H, W) and set(np.unique(mask)) == {0, 1}, name
        expected = classic(mask)
        assert rle.encode(mask) == expected, name
        assert rle.encode(mask.astype(bool)) == expected, name
        assert rle.encode(mask * np.uint8(255)) == expected, name
        assert rle.validate(expected) is None, name
        decoded = rle.decode(expected)
        assert decoded.dtype == np.uint8 and decoded.shape == (H, W)
        assert np.array_equal(decoded, mask), name


@pytest.mark.parametrize("density", [0.001, 0.2, 0.5, 0.8, 0.999])
def test_random_full_size_masks(density):
    mask = np.random.default_rng(int(density * 1000)).random((H, W)) < density
    expected = classic(mask)
    assert rle.encode(mask) == expected
    assert np.array_equal(rle.decode(expected), mask)


def test_random_small_masks_of_every_shape():
    rng = np.random.default_rng(7)
    for _ in range(500):
        h, w = (int(x) for x in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        expected = classic(mask)
        assert rle.encode(mask) == expected, (h, w)
        assert np.array_equal(rle.decode(expected, (h, w)), mask), (h, w)


def test_non_contiguous_mask():
    mask = np.random.default_rng(3).random((W, H)) < 0.5
    assert rle.encode(mask.T) == classic(mask.T)


def test_empty_and_full_masks():
    assert rle.encode(np.zeros((H, W), np.uint8)) == ""
    assert not rle.decode("").any()
    assert rle.encode(np.ones((H, W), bool)) == f"1 {N}"
    assert rle.decode(f"1 {N}").all()


def test_first_and_last_pixels():
    mask = np.zeros((H, W), bool)
    mask[0, 0] = True
    assert rle.encode(mask) == "1 1"
    mask[-1, -1] = True
    assert rle.encode(mask) == f"1 1 {N} 1"
    mask[0, 0] = False
    assert rle.encode(mask) == f"{N} 1"
    mask[-1, :] = True
    mask[0, :3] = True
    assert rle.encode(mask) == f"1 3 {N - W + 1} {W}"
    assert np.array_equal(rle.decode(rle.encode(mask)), mask)


def test_row_major_one_indexed_on_a_hand_made_mask():
    mask = np.array([[0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]], np.uint8)
    assert rle.encode(mask) == "2 2 8 2 12 1"
    assert np.array_equal(rle.decode("2 2 8 2 12 1", (3, 4)), mask)


def test_encode_rejects_non_2d():
    with pytest.raises(CarvanaError, match="2-D"):
        rle.encode(np.zeros((2, 3, 4), np.uint8))


def test_kaggle_rle_prefixes_of_full_masks(shared_full, kaggle_prefixes):
    paths = [shared_full / "train_masks" / f"{img[:-4]}_mask.gif" for img, _ in kaggle_prefixes]
    if not all(p.exists() for p in paths):
        pytest.skip("the full-resolution masks of car 00087a6bd4dc are not in full/train_masks")
    for (img, prefix), path in zip(kaggle_prefixes, paths, strict=True):
        assert rle.encode(np.asarray(Image.open(path))).startswith(prefix + " "), img


def test_kaggle_rle_prefixes_are_row_major_on_small512(kaggle_prefixes):
    """The Kaggle runs land on the top edge of the same car's 512x512 mask scaled back to 1918x1280."""
    assert kaggle_prefixes[0][1].startswith("879386 40 ")  # row 458, columns 941-980 (README)
    assert np.flatnonzero(rle.decode("879386 40"))[[0, -1]].tolist() == [458 * W + 941, 458 * W + 980]
    for img, prefix in kaggle_prefixes:
        small = np.asarray(Image.open(SHARED / "small512" / "train_masks" / f"{img[:-4]}_mask.gif"))
        up = cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST)
        near = cv2.dilate(up, np.ones((7, 7), np.uint8)).astype(bool)
        runs = rle.decode(prefix).astype(bool)
        assert near[runs].mean() > 0.95, img
        assert abs(np.flatnonzero(runs.any(1))[0] - np.flatnonzero(up.any(1))[0]) <= 3, img
        # The same numbers read column-major would not trace that edge.
        assert near[rle.decode(prefix, (W, H)).T.astype(bool)].mean() < 0.8, img


GOOD = ["", "1 1", "5 3 20 1", "1 2 3 4", f"1 {N}", f"{N} 1", "0007 2"]
BAD = {
    "1": "odd",
    "1 2 3": "odd",
    "a b": "integer",
    "1.5 2": "integer",
    "1 2e3": "integer",
    "-1 2": "integer",
    "1,2": "integer",
    "1\t2": "integer",
    "1  2": "spaces",
    " 1 2": "spaces",
    "1 2 ": "spaces",
    "0 5": "start",
    "3 0": "length",
    "10 2 5 2": "increasing",
    "10 2 10 1": "increasing",
    "10 5 12 2": "overlap",
    f"{N} 2": "past",
    f"{N + 1} 1": "past",
    f"5 {N}": "past",
    "99999999999999999999 99999999999999999999": "past",
}


@pytest.mark.parametrize("good", GOOD)
def test_validate_accepts(good):
    assert rle.validate(good) is None
    assert rle.decode(good).shape == (H, W)


@pytest.mark.parametrize(("bad", "reason"), BAD.items())
def test_validate_and_decode_reject(bad, reason):
    message = rle.validate(bad)
    assert message is not None and reason in message and "\n" not in message
    with pytest.raises(CarvanaError, match=reason):
        rle.decode(bad)


def test_validate_uses_the_shape():
    assert rle.validate("10 3", (3, 4)) is None
    assert "past" in rle.validate("11 3", (3, 4))
    with pytest.raises(CarvanaError):
        rle.decode("11 3", (3, 4))
