"""Second stages on a first stage's map: the two-stage crop (7th place) and contour refinement (11th/15th)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from runs import REPO, train
from torch import nn

from carvana import runs
from carvana.data.focus import Box, Contour
from carvana.data.geometry import Geometry
from carvana.errors import CarvanaError
from carvana.predict.prediction_module import PredictionModule

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def coarse_map(height=200, width=300, seed=0) -> np.ndarray:
    """A blurred blob with a ragged edge, well inside the image: a first stage's 8-bit map of one car."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), (width // 4, height // 5), 0, 0, 360, 1, -1)
    for _ in range(6):
        x, y = rng.integers(width // 3, 2 * width // 3), rng.integers(height // 3, 2 * height // 3)
        cv2.circle(mask, (int(x), int(y)), int(rng.integers(10, 30)), 1, -1)
    return cv2.GaussianBlur(mask * 255, (9, 9), 3)


def stacked(coarse: np.ndarray, seed=1) -> torch.Tensor:
    """A uint8 (1, H, W, 4) batch: a random image and its coarse map as channel 4, as predict_missing feeds
    a second stage."""
    image = np.random.default_rng(seed).integers(0, 256, (*coarse.shape, 3), dtype=np.uint8)
    return torch.from_numpy(np.dstack([image, coarse]))[None]


def pointwise_net(channels=3) -> nn.Module:
    """A network whose output at a pixel depends on that pixel only: a window's prediction equals the whole
    image's prediction on that window, so the two stages can be compared exactly."""
    torch.manual_seed(0)
    return nn.Conv2d(channels, 1, 1)


def predict(module: PredictionModule, batch: torch.Tensor) -> np.ndarray:
    height, width = batch.shape[1:3]
    sizes = {"height": torch.tensor([height]), "width": torch.tensor([width]), "id": ["car_01"]}
    with torch.no_grad():
        return module.predict_step({"image": batch, **sizes}, 0)["prob"][0].numpy()


def test_box_is_the_padded_bounding_box_of_the_coarse_mask():
    coarse = coarse_map()
    ys, xs = np.nonzero(coarse > 127)
    margin = round(0.1 * coarse.shape[1])
    top, left, height, width = Box(pad=0.1).box(coarse)
    assert (top, left) == (ys.min() - margin, xs.min() - margin)
    assert (top + height, left + width) == (ys.max() + 1 + margin, xs.max() + 1 + margin)
    assert Box().box(np.zeros((64, 96), np.uint8)) == (0, 0, 64, 96)  # no car found: the whole image
    assert Box(pad=1.0).box(coarse) == (0, 0, *coarse.shape)  # clipped to the image


def test_two_stage_prediction_is_the_single_stage_prediction_restricted_to_the_box(one_thread):
    coarse = coarse_map(height=200, width=300)  # neither side a multiple of 32: the box is padded, cropped
    box = Box(pad=0.05)
    top, left, height, width = box.box(coarse)
    assert top > 0 and left > 0 and top + height < 200 and left + width < 300  # the car touches no box edge
    net = pointwise_net()
    geometry = Geometry("crop", crop=(64, 64))
    batch = stacked(coarse)
    two_stage = predict(PredictionModule([net], geometry, MEAN, STD, focus=box), batch)
    single = predict(PredictionModule([net], Geometry("pad"), MEAN, STD), batch[..., :3])
    inside = np.zeros(coarse.shape, bool)
    inside[top : top + height, left : left + width] = True
    np.testing.assert_array_equal(two_stage[inside], single[inside])
    assert not two_stage[~inside].any()  # outside the box is background
    assert single[~inside].any()  # ...which the single stage did not predict


def test_box_training_windows_lie_inside_the_box():
    coarse = coarse_map()
    box = Box(pad=0.05)
    top, left, height, width = box.box(coarse)
    rng = np.random.default_rng(0)
    for _ in range(50):
        y, x, h, w = box.train_window(coarse, (64, 96), rng)
        assert (h, w) == (64, 96)
        assert top <= y and y + h <= top + height and left <= x and x + w <= left + width
    y, x, h, w = box.train_window(coarse, (192, 288), rng)  # larger than the box: centred, in the image
    assert y >= 0 and y + h <= 200 and x >= 0 and x + w <= 300
    with pytest.raises(CarvanaError, match=r"data.geometry.crop=\[256, 256\]: larger than a 200x300 image"):
        box.train_window(coarse, (256, 256), rng)


@pytest.mark.parametrize("shape", [(200, 300), (64, 96)])
def test_contour_patches_cover_every_contour_pixel(shape):
    coarse = coarse_map(*shape)
    contour = Contour()
    edge = contour.contour(coarse)
    mask = coarse > 127
    assert edge[mask].any() and edge[~mask].any()  # both sides of the edge
    windows = contour.windows(coarse, (32, 32))
    covered = np.zeros(shape, bool)
    for top, left, height, width in windows:
        assert (height, width) == (32, 32) and 0 <= top <= shape[0] - 32 and 0 <= left <= shape[1] - 32
        covered[top : top + height, left : left + width] = True
    assert covered[edge].all()
    assert not covered.all()  # the patches are near the edge, not everywhere


def test_contour_blend_is_feathered_and_leaves_pixels_outside_the_patches_unchanged():
    coarse = coarse_map()
    contour = Contour()
    windows = contour.windows(coarse, (32, 32))
    refined = [torch.full((32, 32), 0.3) for _ in windows]
    out = contour.blend(torch.from_numpy(coarse), windows, refined).numpy()
    covered = np.zeros(coarse.shape, bool)
    for top, left, height, width in windows:
        covered[top : top + height, left : left + width] = True
    np.testing.assert_array_equal(out[~covered], coarse[~covered] / np.float32(255))
    np.testing.assert_allclose(out[contour.contour(coarse)], 0.3, atol=1e-6)  # full weight on the contour
    between = covered & ~contour.contour(coarse)
    low, high = np.minimum(coarse / 255, 0.3), np.maximum(coarse / 255, 0.3)
    assert ((out[between] >= low[between] - 1e-6) & (out[between] <= high[between] + 1e-6)).all()
    feather = Contour.feather(32, 32)
    assert feather[8:24, 8:24].eq(1).all() and 0 < feather[0, 0] < feather[4, 4] < 1


def test_contour_prediction_changes_only_the_patches(one_thread):
    coarse = coarse_map()
    module = PredictionModule([pointwise_net(4)], Geometry("crop", crop=(32, 32)), MEAN, STD, focus=Contour())
    out = predict(module, stacked(coarse))
    covered = np.zeros(coarse.shape, bool)
    for top, left, height, width in Contour().windows(coarse, (32, 32)):
        covered[top : top + height, left : left + width] = True
    np.testing.assert_array_equal(out[~covered], coarse[~covered])
    assert (out[covered] != coarse[covered]).any()


def test_a_focus_needs_one_first_stage_and_crop_windows(data_root, tmp_path):
    from carvana.data.datamodule import CarvanaDataModule

    common = {"root": str(data_root), "fold": 0, "n_folds": 5, "augment": None, "cache_dir": str(tmp_path)}
    with pytest.raises(CarvanaError, match=r"data\.focus: needs the first stage's experiment folder"):
        CarvanaDataModule(**common, geometry=Geometry("pad"), sources=["a"], focus=Box())
    with pytest.raises(CarvanaError, match=r"data\.focus: needs the first stage's experiment folder"):
        CarvanaDataModule(**common, geometry=Geometry("crop"), sources=["a", "b"], focus=Contour())


def test_both_second_stages_train_score_out_of_fold_and_predict_chained(tmp_path):
    """A first stage on 2 folds, then each second stage's fold 0 on its OOF maps: full-size OOF maps and
    scores, and one predict.py run that predicts the first stage's test maps, then the second stage's, and
    submits."""
    tiny = ["n_folds=2", "data.synthetic.cars=4", "logger=none"]
    coarse = ["name=coarse", "model=linknet18", "data.geometry.mode=resize", "data.geometry.size=[32,64]"]
    first = train(tmp_path, "-m", *coarse, *tiny, "fold=0,1")
    assert first.returncode == 0, first.stderr[-3000:]
    outputs = tmp_path / "outputs"
    window = ["data.geometry.crop=[32,32]", f"data.sources=[{outputs / 'coarse'}]"]
    done = train(tmp_path, "-m", "+experiment=two_stage,contour", *tiny, *window, "fold=0")  # one process
    assert done.returncode == 0, done.stderr[-3000:]
    for recipe in ("two_stage", "contour"):
        run = outputs / recipe / "fold0"
        score = runs.read_json(run / runs.OOF_SCORE)
        assert 0 < score["dice"] <= 1
        oof = runs.map_files(run / runs.OOF)
        assert set(oof) == set(score["per_image"])
        assert runs.read_map(next(iter(oof.values()))).shape == (70, 100)  # the images' own size
        manifest = json.loads((run / runs.OOF / runs.MANIFEST).read_text())
        focus = manifest["focus"]["_target_"].rsplit(".")[-1]
        assert focus == ("Box" if recipe == "two_stage" else "Contour")

    env = {**os.environ, "CARVANA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(  # from tmp_path: the first stage's maps land in its predictions/coarse
        [sys.executable, str(REPO / "predict.py"),
         f"checkpoints={outputs}/two_stage/fold0/checkpoints/best.ckpt",
         f"first_stage={outputs}/coarse/fold*/checkpoints/best.ckpt", "trainer=cpu", "out_dir=two_stage"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first = runs.map_files(tmp_path / "predictions" / "coarse")
    second = runs.map_files(tmp_path / "two_stage")
    assert set(first) == set(second) and len(second) == 16
    assert (tmp_path / "two_stage" / runs.SUBMISSION).is_file()
