"""carvana.pseudo on a prediction folder made from real masks: selection, Kaggle-layout output, read-back."""

import csv
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana.data.kaggle import read_mask, train_samples
from carvana.errors import CarvanaError
from carvana.submit import pseudo


def uncertain_share(prob: np.ndarray) -> float:
    p = prob.astype(np.float64) / 255
    return float(np.mean((p > 0.1) & (p < 0.9)))


def test_confidence_counts_strictly_between_tenth_and_nine_tenths():
    # 25/255 < 0.1 < 26/255 and 229/255 < 0.9 < 230/255
    prob = np.array([[0, 25, 26, 127, 229, 230, 255]], np.uint8)
    assert pseudo.confidence(prob) == pytest.approx(3 / 7)
    assert pseudo.confidence(prob) == pytest.approx(uncertain_share(prob))
    with pytest.raises(CarvanaError, match="uint8"):
        pseudo.confidence(prob.astype(np.float32))


@pytest.mark.parametrize("fill", ["zeros", "ones", "random"])
def test_mask_gif_reads_back(tmp_path, fill):
    """Small masks too: below 512x512 Pillow would otherwise optimise the palette of an all-car mask away."""
    rng = np.random.default_rng(3)
    mask = {
        "zeros": np.zeros((20, 30), np.uint8),
        "ones": np.ones((20, 30), np.uint8),
        "random": rng.integers(0, 2, (20, 30), dtype=np.uint8),
    }[fill]
    path = tmp_path / "x_mask.gif"
    path.write_bytes(pseudo.mask_gif(mask.astype(bool)))
    np.testing.assert_array_equal(read_mask(path), mask)
    with Image.open(path) as gif:
        assert gif.mode == "P" and gif.getpalette()[:6] == [0, 0, 0, 255, 255, 255]


@pytest.fixture(scope="module")
def preds(tmp_path_factory, shared_full) -> tuple[Path, dict[str, np.ndarray], set[str]]:
    """(prediction folder, id -> map, ids expected kept): real masks of shared full/ as predictions."""
    folder = tmp_path_factory.mktemp("pred")
    masks = sorted((shared_full / "train_masks").glob("*_mask.gif"))[::9][:6]
    maps, kept = {}, set()
    for n, path in enumerate(masks):
        image_id = path.name.removesuffix("_mask.gif")
        prob = np.where(read_mask(path) == 1, 240, 8).astype(np.uint8)
        if n == 1:
            prob[400:700, 300:800] = 128  # 6% of the pixels mid-grey: rejected
        elif n == 2:
            prob[100:200, 100:198] = 100  # 0.4% uncertain: kept, and that block becomes background
        elif n == 3:
            prob[:] = 255  # all car
        elif n == 4:
            prob[500:520, :] = 60  # 1.6% uncertain: rejected
        if uncertain_share(prob) <= 0.005:
            kept.add(image_id)
        maps[image_id] = prob
        assert cv2.imwrite(str(folder / f"{image_id}.png"), prob)
    assert len(kept) == 4
    return folder, maps, kept


def test_confident_predictions_become_training_pairs(preds, shared_full, tmp_path):
    folder, maps, expected = preds
    out = tmp_path / "pseudo"
    kept = pseudo.select_and_write(folder, shared_full / "train", out, workers=2)
    assert kept == sorted(expected)

    samples = train_samples(out)
    assert [s.image_id for s in samples] == kept
    for sample in samples:
        prob = maps[sample.image_id]
        np.testing.assert_array_equal(read_mask(sample.mask), prob / 255 > 0.5)
        with Image.open(sample.mask) as gif:
            assert gif.format == "GIF" and gif.mode == "P" and getattr(gif, "n_frames", 1) == 1
            assert gif.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
            assert set(np.unique(np.asarray(gif))) <= {0, 1}
        source = shared_full / "train" / f"{sample.image_id}.jpg"
        assert sample.image.read_bytes() == source.read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    with open(out / "pseudo.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "uncertain"] and [r[0] for r in rows[1:]] == kept
    for image_id, share in rows[1:]:
        assert float(share) == pytest.approx(uncertain_share(maps[image_id]), rel=1e-5)

    with pytest.raises(CarvanaError, match="not empty"):  # a second selection never mixes with the first
        pseudo.select_and_write(folder, shared_full / "train", out)


def test_copy_when_a_hard_link_is_refused(preds, shared_full, tmp_path, monkeypatch):
    folder, _, expected = preds

    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    kept = pseudo.select_and_write(folder, shared_full / "train", tmp_path / "out", workers=1)
    assert kept == sorted(expected)
    for image_id in kept:
        copy = tmp_path / "out" / "train" / f"{image_id}.jpg"
        assert copy.stat().st_nlink == 1
        assert copy.read_bytes() == (shared_full / "train" / f"{image_id}.jpg").read_bytes()


def test_empty_selection_warns(preds, shared_full, tmp_path, caplog):
    folder, maps, expected = preds
    unsure = tmp_path / "unsure"
    unsure.mkdir()
    for image_id in set(maps) - expected:
        (unsure / f"{image_id}.png").write_bytes((folder / f"{image_id}.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="carvana.submit.pseudo"):
        kept = pseudo.select_and_write(unsure, shared_full / "train", tmp_path / "out", workers=1)
    assert kept == []
    assert "no prediction" in caplog.text
    assert (tmp_path / "out" / "pseudo.csv").read_text() == "id,uncertain\n"
    assert not list((tmp_path / "out").rglob("*.jpg")) and not list((tmp_path / "out").rglob("*.gif"))


def test_prediction_without_its_jpeg(preds, shared_full, tmp_path):
    folder, _, _ = preds
    with pytest.raises(CarvanaError, match=r"6 of 6 predictions .* no JPEG in .*test, first: "):
        pseudo.select_and_write(folder, shared_full / "test", tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
    assert pseudo.main([str(folder), str(shared_full / "test"), str(tmp_path / "out")]) == 2
