"""The reader of Kaggle's layout, on the real files beside the checkout."""

import shutil

import numpy as np
import pytest

from carvana.data import kaggle as dataset
from carvana.data.kaggle import read_image, read_mask, train_samples
from carvana.errors import CarvanaError


def test_full_resolution_layout(shared_full):
    samples = train_samples(shared_full)
    assert len(samples) == 72
    assert len({s.car for s in samples}) == 19
    image, mask = read_image(samples[0].image), read_mask(samples[0].mask)
    assert image.shape == (1280, 1918, 3) and image.dtype == np.uint8
    assert mask.shape == (1280, 1918) and set(np.unique(mask)) == {0, 1}
    assert 0.05 < mask.mean() < 0.6
    tests = dataset.test_samples(shared_full)
    assert len(tests) == 13 and all(s.mask is None for s in tests)


def test_small512_layout(shared_small512):
    samples = train_samples(shared_small512)
    assert len(samples) == 254 * 16
    assert read_image(samples[-1].image).shape == (512, 512, 3)
    assert set(np.unique(read_mask(samples[-1].mask))) == {0, 1}


def test_image_without_mask_is_named(shared_full, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    first, second = train_samples(shared_full)[:2]
    for sample in (first, second):
        shutil.copy(sample.image, tmp_path / "train")
    shutil.copy(first.mask, tmp_path / "train_masks")
    with pytest.raises(CarvanaError, match=f"{second.image_id}.jpg: no mask .*{second.image_id}_mask.gif"):
        train_samples(tmp_path)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CarvanaError, match=str(tmp_path / "train_hq")):
        train_samples(tmp_path, images_dir="train_hq")
