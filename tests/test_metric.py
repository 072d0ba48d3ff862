"""val/dice is the competition metric: mean per-image Dice on the original pixels, geometry undone."""

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from carvana.data.datamodule import CarvanaDataModule
from carvana.data.geometry import Geometry
from carvana.data.kaggle import read_image, read_mask
from carvana.models import NetworkInput
from carvana.train.losses import BceDice
from carvana.train.segmentation_module import SegmentationModule

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
WEIGHTS, BIAS = np.array([0.9, -0.2, 0.6]), -0.1


def pointwise_logits(image: np.ndarray) -> np.ndarray:
    """The test network, written again in numpy: a fixed 1x1 convolution of the normalised image."""
    x = (image.astype(np.float64) - MEAN * 255) / (STD * 255)
    return x @ WEIGHTS + BIAS


def numpy_dice(pred: np.ndarray, true: np.ndarray) -> float:
    total = pred.sum() + true.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(pred, true).sum() / total


def pointwise_net() -> nn.Module:
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1))
        conv.bias.fill_(BIAS)
    return conv


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_val_dice_equals_numpy_per_image_dice(mode, shared_full, tmp_path):
    geometry = Geometry(mode=mode, size=(320, 480))
    datamodule = CarvanaDataModule(
        root=str(shared_full),
        fold=1,
        n_folds=5,
        geometry=geometry,
        augment=None,
        cache_dir=str(tmp_path),
        batch_size=3,
        num_workers=0,
    )
    module = SegmentationModule(
        pointwise_net(), BceDice(), torch.optim.Adam, geometry, MEAN.tolist(), STD.tolist()
    )
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    (metrics,) = trainer.validate(module, datamodule=datamodule)

    scores = []
    for sample in datamodule.val_set.samples:
        image, mask = read_image(sample.image), read_mask(sample.mask)
        if mode == "pad":  # a pointwise network sees each original pixel unchanged by the padding
            logits = pointwise_logits(image)
        else:
            small = cv2.resize(image, (480, 320), interpolation=cv2.INTER_AREA)
            logits = cv2.resize(pointwise_logits(small), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        assert logits.shape == mask.shape == (1280, 1918)
        scores.append(numpy_dice(logits > 0, mask > 0))
    assert len(scores) >= 8
    assert 0.05 < np.mean(scores) < 0.95
    assert metrics["val/dice"] == pytest.approx(np.mean(scores), abs=1e-6 if mode == "pad" else 2e-3)


def test_empty_prediction_and_mask_score_one():
    from carvana.metrics import per_image_dice

    probs = torch.zeros(2, 1, 4, 6)
    target = torch.zeros(2, 1, 4, 6, dtype=torch.uint8)
    probs[1, 0, :2] = 0.9
    target[1, 0, :1] = 1
    expected = numpy_dice(probs[1].numpy() > 0.5, target[1].numpy() > 0)
    assert per_image_dice(probs, target).tolist() == pytest.approx([1.0, expected])


def test_geometry_shapes_and_restore():
    image = np.zeros((1280, 1918, 3), np.uint8)
    padded = Geometry("pad").eval()[0](image=image)["image"]
    assert padded.shape == (1280, 1920, 3)
    crop = Geometry("crop", crop=(256, 384))
    out = crop.train()[1](image=crop.train()[0](image=image)["image"])["image"]
    assert out.shape == (256, 384, 3)
    restored = Geometry("pad").restore(torch.arange(1280 * 1920.0).view(1, 1, 1280, 1920), 1280, 1918)
    assert restored.shape == (1, 1, 1280, 1918) and restored[0, 0, 1, 0] == 1920


def test_network_input_standardises_a_copy_and_scales_extra_channels():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = torch.randint(0, 256, (2, 5, 7, 4), dtype=torch.uint8)  # 3 colour channels and one map
    kept = image.clone()
    x = NetworkInput(mean, std)(image)
    pixels = image.numpy().astype(np.float64)
    expected = np.concatenate(
        [(pixels[..., :3] / 255 - mean) / std, pixels[..., 3:] / 255], axis=-1
    ).transpose(0, 3, 1, 2)
    assert x.dtype == torch.float32 and x.shape == (2, 4, 5, 7)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(image, kept)
    floats = kept.float()  # a float batch is copied too, never standardised in place
    NetworkInput(mean, std)(floats)
    assert torch.equal(floats, kept.float())
