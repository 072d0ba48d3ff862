"""Training on pseudo-labelled test images, and starting a fold from another run's weights."""

import cv2
import numpy as np
import pytest
import torch
from runs import train

from carvana.data import kaggle as dataset
from carvana.data import synthetic
from carvana.data.datamodule import CarvanaDataModule
from carvana.data.geometry import Geometry
from carvana.data.kaggle import read_image, read_mask, train_samples
from carvana.errors import CarvanaError
from carvana.submit import pseudo


def confident_predictions(images, folder):
    """A confident probability map for every image: a car-sized block of 255 on 0."""
    folder.mkdir()
    for sample in images:
        height, width = read_image(sample.image).shape[:2]
        prob = np.zeros((height, width), np.uint8)
        prob[height // 4 : 3 * height // 4, width // 5 : 4 * width // 5] = 255
        cv2.imwrite(str(folder / f"{sample.image_id}.png"), prob)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pseudo")
    root = synthetic.generate(tmp / "synthetic", cars=5, test_cars=2, width=100, height=70)  # as runs.TINY
    confident_predictions(dataset.test_samples(root), tmp / "pred")
    kept = pseudo.select_and_write(tmp / "pred", root / "test", tmp / "pseudo", workers=1)
    assert len(kept) == 32
    return tmp, root, tmp / "pseudo"


def datamodule(root, pseudo_root, cache_dir):
    return CarvanaDataModule(
        root=str(root), fold=1, n_folds=5, geometry=Geometry("pad"), augment=None, cache_dir=str(cache_dir),
        pseudo_root=str(pseudo_root), num_workers=0,
    )  # fmt: skip


def test_pseudo_labels_join_every_training_fold_and_no_validation(data):
    tmp, root, pseudo_root = data
    dm = datamodule(root, pseudo_root, tmp / "cache")
    dm.setup()
    pseudo_ids = {s.image_id for s in train_samples(pseudo_root)}
    train_ids = {s.image_id for s in dm.train_set.samples}
    val_ids = {s.image_id for s in dm.val_set.samples}
    assert pseudo_ids <= train_ids and not pseudo_ids & val_ids
    assert len(train_ids - pseudo_ids) == 4 * 16 and len(val_ids) == 16
    item = dm.train_set[[s.image_id for s in dm.train_set.samples].index(sorted(pseudo_ids)[0])]
    pred = cv2.imread(str(tmp / "pred" / f"{sorted(pseudo_ids)[0]}.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(item["mask"][0, :70, :100].numpy(), (pred > 127).astype(np.uint8))  # padding cut


def test_pseudo_root_with_a_training_car_is_refused(data, tmp_path):
    tmp, root, _ = data
    leaky = tmp_path / "leaky"
    (leaky / "train").mkdir(parents=True)
    (leaky / "train_masks").mkdir()
    sample = train_samples(root)[0]
    (leaky / "train" / sample.image.name).write_bytes(sample.image.read_bytes())
    (leaky / "train_masks" / sample.mask.name).write_bytes(pseudo.mask_gif(read_mask(sample.mask)))
    with pytest.raises(CarvanaError, match=f"data.pseudo_root={leaky}: holds training car {sample.car}"):
        datamodule(root, leaky, tmp / "cache").setup()


def test_init_from_starts_with_the_given_weights(data, tmp_path):
    _, _, pseudo_root = data
    first = train(tmp_path, "model=linknet18", "logger=none", "oof=false", "name=pretrain")
    assert first.returncode == 0, first.stderr[-3000:]
    pretrained = tmp_path / "outputs" / "pretrain" / "fold0" / "checkpoints" / "best.ckpt"

    # learning rate 0: the fine-tuned network's parameters must stay exactly the pretrained ones
    second = train(
        tmp_path, "model=linknet18", "logger=none", "oof=false", "name=finetune", f"init_from={pretrained}",
        "optimizer.lr=0", "scheduler=none", f"data.pseudo_root={pseudo_root}",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"network initialised from {pretrained}" in second.stdout + second.stderr
    assert "32 pseudo-labelled images" in second.stdout + second.stderr
    before = torch.load(pretrained, map_location="cpu", weights_only=False)["state_dict"]
    after = torch.load(
        tmp_path / "outputs" / "finetune" / "fold0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )["state_dict"]
    params = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert params and all(torch.equal(before[k], after[k]) for k in params)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_init_from_a_missing_checkpoint_is_one_line(tmp_path):
    result = train(tmp_path, "logger=none", "oof=false", f"init_from={tmp_path / 'none.ckpt'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: init_from={tmp_path / 'none.ckpt'}: no such checkpoint"
    )
