"""carvana.postprocess on a hand-drawn mask, on a real 1918x1280 mask, and evaluate() on a tiny OOF folder."""

import pickle

import cv2
import numpy as np
import pytest

from carvana.data.kaggle import read_mask
from carvana.errors import CarvanaError
from carvana.submit.postprocess import PostProcess, evaluate, main

# A real mask that is one 8-connected piece without holes (checked in the test that uses it).
CLEAN_MASK = "0795e132d090_01_mask.gif"


def drawing() -> dict[str, np.ndarray]:
    """A 40x60 mask and its parts, drawn by hand: each expectation below is assembled from these parts."""
    blob = np.zeros((40, 60), np.uint8)
    blob[5:30, 0:30] = 1  # touches the left border
    blob[15:20, 0:5] = 0  # a notch open to the border: background, not a hole
    blob[5, 29] = 0  # a corner pixel cut off: it touches the outside
    blob[30, 30] = 1  # only diagonally attached: part of the blob with 8-connectivity
    hole = np.zeros_like(blob)
    hole[10:13, 15:18] = 1
    hole[6, 28] = 1  # meets the outside only diagonally (via [5, 29]): a hole with 4-connectivity
    mid = np.zeros_like(blob)
    mid[2:12, 40:50] = 1
    mid_hole = np.zeros_like(blob)
    mid_hole[6:8, 44:46] = 1
    speck = np.zeros_like(blob)
    speck[35:37, 50:52] = 1
    mask = (blob - hole) + (mid - mid_hole) + speck
    assert set(np.unique(mask)) == {0, 1} and np.count_nonzero(mid - mid_hole) == 96
    return {
        "mask": mask,
        "blob": blob - hole,
        "hole": hole,
        "mid": mid - mid_hole,
        "mid_hole": mid_hole,
        "speck": speck,
    }


@pytest.mark.parametrize(
    ("step", "parts"),
    [
        (PostProcess(), ["blob", "mid", "speck"]),
        (PostProcess(largest_component=True), ["blob"]),
        (PostProcess(min_size=5), ["blob", "mid"]),
        (PostProcess(min_size=96), ["blob", "mid"]),
        (PostProcess(min_size=97), ["blob"]),
        (PostProcess(fill_holes=True), ["blob", "hole", "mid", "mid_hole", "speck"]),
        (PostProcess(min_size=5, fill_holes=True), ["blob", "hole", "mid", "mid_hole"]),
        (PostProcess(largest_component=True, fill_holes=True), ["blob", "hole"]),
        (PostProcess(largest_component=True, min_size=1000), []),  # the biggest piece is under min_size
    ],
)
def test_each_step_on_a_drawn_mask(step, parts):
    d = drawing()
    expected = sum((d[name] for name in parts), np.zeros_like(d["mask"]))
    for mask in (d["mask"], d["mask"].astype(bool), d["mask"] * np.uint8(255)):
        before = mask.copy()
        out = step(mask)
        assert out.dtype == np.uint8 and out.shape == mask.shape
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(mask, before)  # the input is left alone


def test_empty_full_and_bad_masks():
    step = PostProcess(largest_component=True, min_size=10, fill_holes=True)
    for value in (0, 1):
        np.testing.assert_array_equal(step(np.full((7, 9), value, np.uint8)), np.full((7, 9), value))
    assert pickle.loads(pickle.dumps(step)) == step
    with pytest.raises(CarvanaError, match="2-D"):
        step(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CarvanaError, match="min_size"):
        PostProcess(min_size=-1)


def test_real_mask_restored_after_specks_and_holes(shared_full):
    truth = read_mask(shared_full / "train_masks" / CLEAN_MASK)
    assert truth.shape == (1280, 1918)
    everything = PostProcess(largest_component=True, min_size=500, fill_holes=True)
    np.testing.assert_array_equal(everything(truth), truth)  # one piece, no hole: nothing to clean

    # Specks where a 9x9 neighbourhood is all background, holes where it is all car, away from the border.
    rng = np.random.default_rng(1)
    inner = np.zeros_like(truth, bool)
    inner[20:-20, 20:-20] = True
    free = cv2.erode(1 - truth, np.ones((9, 9), np.uint8)).astype(bool) & inner
    solid = cv2.erode(truth, np.ones((9, 9), np.uint8)).astype(bool) & inner
    specky, holey = truth.copy(), truth.copy()
    for y, x in np.argwhere(free)[rng.choice(np.count_nonzero(free), 30, replace=False)]:
        specky[y - 1 : y + 2, x - 1 : x + 2] = 1
    for y, x in np.argwhere(solid)[rng.choice(np.count_nonzero(solid), 30, replace=False)]:
        holey[y - 1 : y + 2, x - 1 : x + 2] = 0
    both = specky & holey
    assert np.count_nonzero(specky != truth) > 0 and np.count_nonzero(holey != truth) > 0

    np.testing.assert_array_equal(PostProcess(largest_component=True)(specky), truth)
    np.testing.assert_array_equal(PostProcess(min_size=10)(specky), truth)
    np.testing.assert_array_equal(PostProcess(fill_holes=True)(holey), truth)
    np.testing.assert_array_equal(everything(both.astype(bool)), truth)
    assert np.count_nonzero(PostProcess(largest_component=True)(both) != truth) > 0  # holes stay


@pytest.fixture(scope="module")
def oof(tmp_path_factory, shared_full):
    """(OOF folder, masks folder, mask paths): 3 real masks as confident maps with bright specks added."""
    root = tmp_path_factory.mktemp("oof")
    rng = np.random.default_rng(2)
    names = sorted((shared_full / "train_masks").glob("*_mask.gif"))[::25][:3]
    for path in names:
        truth = read_mask(path)
        prob = np.where(truth == 1, 220, 30).astype(np.uint8)
        background = np.argwhere(truth[10:-10, 10:-10] == 0) + 10
        for y, x in background[rng.choice(len(background), 20, replace=False)]:
            prob[y - 2 : y + 3, x - 2 : x + 3] = 200
        assert cv2.imwrite(str(root / path.name.replace("_mask.gif", ".png")), prob)
    assert cv2.imwrite(str(root / "no_such_car_01.png"), np.zeros((4, 4), np.uint8))  # no mask: skipped
    return root, shared_full / "train_masks", names


def test_evaluate_scores_each_variant(oof):
    oof_dir, masks_dir, names = oof
    dices = []
    for path in names:
        png = oof_dir / path.name.replace("_mask.gif", ".png")
        pred = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) / 255 > 0.5
        truth = read_mask(path).astype(bool)
        dices.append(2 * np.sum(pred & truth) / (pred.sum() + truth.sum()))
    steps = {"largest": PostProcess(largest_component=True), "fill": PostProcess(fill_holes=True)}
    scores = evaluate(oof_dir, masks_dir, steps, workers=1)
    assert list(scores) == ["none", "largest", "fill"]
    assert scores["none"] == pytest.approx(np.mean(dices), abs=1e-12)
    assert scores["none"] < 0.9999 and scores["largest"] == pytest.approx(1.0)
    assert evaluate(oof_dir, masks_dir, steps, workers=2) == pytest.approx(scores, abs=1e-12)
    # Above the specks' 200/255, only the car is left.
    assert evaluate(oof_dir, masks_dir, {}, threshold=0.8, workers=1) == {"none": pytest.approx(1.0)}


def test_evaluate_errors_and_cli(oof, tmp_path, capsys):
    oof_dir, masks_dir, _ = oof
    with pytest.raises(CarvanaError, match=r"no map \(<id>\.zst or <id>\.png\)"):
        evaluate(tmp_path, masks_dir, {})
    with pytest.raises(CarvanaError, match="threshold"):
        evaluate(oof_dir, masks_dir, {}, threshold=2)
    assert main([str(oof_dir), str(masks_dir), "--workers", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["variant", "mean", "Dice", "vs", "none"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"none", "largest_component", "min_size=1000", "fill_holes", "largest+fill"}
    assert rows["none"][1] == "+0.000000" and float(rows["largest_component"][1]) > 0
    assert main([str(tmp_path / "missing"), str(masks_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
