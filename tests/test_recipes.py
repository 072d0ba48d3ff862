"""The top teams' training tricks, each config in a short real Lightning run on tiny synthetic cars.

Runs are in-process: ``hydra.compose`` of conf/train.yaml and the builders of ``carvana.training``; a tiny
from-scratch U-Net on 96x64 images keeps each run to a few seconds on a 2-core CPU.
"""

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import carvana.config  # noqa: F401  (registers the `eq` resolver of the logger config)
from carvana.config import build_model, instantiate
from carvana.data.kaggle import read_image, read_mask
from carvana.train.losses import boundary_weights
from carvana.train.schedules import StepCyclic
from carvana.train.segmentation_module import SegmentationModule

CONF = Path(__file__).resolve().parents[1] / "conf"
LR = 1.0e-3


def configs(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


def train_config(tmp_path: Path, data_root: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "trainer=cpu",
                "logger=none",
                "aug=none",
                "scheduler=none",
                f"paths.output_dir={tmp_path}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"data.root={data_root}",
                "data.num_workers=0",
                "data.batch_size=4",
                "model=unet",
                "model.base_channels=8",
                "model.depth=3",
                f"optimizer.lr={LR}",
                *overrides,
            ],
        )


def build_module(cfg: DictConfig) -> SegmentationModule:
    """The training module, built as ``carvana.training.train`` builds it."""
    pl.seed_everything(cfg.seed)
    return instantiate(
        cfg.module,
        net=build_model(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )


def fit(
    cfg: DictConfig, *callbacks: pl.Callback, module: SegmentationModule | None = None, **trainer: Any
) -> pl.Trainer:
    """Train ``module`` (default: built from ``cfg``) with these callbacks, no logger and no checkpoints."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    runner = instantiate(
        cfg.trainer, callbacks=list(callbacks), enable_model_summary=False, **quiet, **trainer
    )
    runner.fit(module or build_module(cfg), datamodule=instantiate(cfg.data))
    return runner


class Record(pl.Callback):
    """What every training step saw: its batch, loss and learning rate."""

    def __init__(self):
        self.batches: list[dict] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def epoch_lrs(self) -> list[float]:
        """The LR of each epoch's first step."""
        return [lr for i, lr in enumerate(self.lrs) if i == 0 or self.epochs[i] != self.epochs[i - 1]]


# ---------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", configs("loss"))
def test_loss_trains(name, tmp_path, data_root):
    record = Record()
    fit(train_config(tmp_path, data_root, f"loss={name}", "trainer.max_epochs=8"), record, overfit_batches=1)
    assert len(record.losses) == 8 and all(math.isfinite(loss) for loss in record.losses)
    assert np.mean(record.losses[-2:]) < 0.9 * np.mean(record.losses[:2]), record.losses


def test_boundary_weights_peak_on_the_mask_edge():
    target = torch.zeros(2, 1, 64, 96)
    target[0, :, 16:48, 24:72] = 1  # a box: edges at rows 16/48, columns 24/72
    target[1, :, 32:, :] = 1  # a horizontal edge at row 32
    weights = boundary_weights(target, kernel_size=9)
    assert weights.shape == target.shape
    assert torch.allclose(weights.mean(dim=(-2, -1)), torch.ones(2, 1))
    near, inside, outside = weights[0, 0, 16, 48], weights[0, 0, 32, 48], weights[0, 0, 2, 2]
    assert near > 5 * inside and near > 5 * outside
    edge, far = weights[1, 0, 31:33, 40], weights[1, 0, [2, 61], 40]
    assert edge.min() > 5 * far.max()
    assert torch.allclose(weights[1, 0, :, 0], weights[1, 0, :, 50])  # the image border is no edge


# ------------------------------------------------------------------------------------------------ schedules


def cosine(epoch: int, epochs: int) -> float:
    return 1.0e-6 + (LR - 1.0e-6) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def one_cycle(steps: int) -> list[float]:
    """torch's OneCycleLR with the config's settings on a throwaway parameter, stepped ``steps`` times."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
        cycle_momentum=False,
    )  # fmt: skip
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# step decay x0.5 every 2 epochs until epoch 3, then 3-epoch cycles halving every epoch
SMALL_STEP_CYCLIC = [
    f"scheduler.lr_lambda.{setting}"
    for setting in ("step_epochs=2", "cycle_start=3", "cycle_epochs=3", "cycle_step_epochs=1", "gamma=0.5")
]
# name: (overrides, trainer options, the check of the recorded LRs)
SCHEDULES = {
    "none": (["trainer.max_epochs=3"], {}, lambda r: r.lrs == [LR] * 3),
    "cosine": (
        ["trainer.max_epochs=3"],
        {},
        lambda r: np.allclose(r.epoch_lrs(), [cosine(e, 3) for e in range(3)]),
    ),
    "step_cyclic": (
        [*SMALL_STEP_CYCLIC, "trainer.max_epochs=8"],
        {},
        lambda r: np.allclose(r.epoch_lrs(), [LR * f for f in (1, 1, 0.5, 1, 0.5, 0.25, 1, 0.5)]),
    ),
    # per batch: 2 epochs x 3 batches, total_steps filled in by the module
    "onecycle": (
        ["trainer.max_epochs=2"],
        {"limit_train_batches": 3},
        lambda r: np.allclose(r.lrs, one_cycle(6)),
    ),
    # no epoch can beat the best by 10 (Dice <= 1): the LR halves after every epoch but the first
    "plateau": (
        ["scheduler.patience=0", "scheduler.threshold=10", "scheduler.factor=0.5", "trainer.max_epochs=3"],
        {"limit_val_batches": 1},
        lambda r: np.allclose(r.epoch_lrs(), [LR, LR, LR / 2]),
    ),
}


def test_every_schedule_is_tested():
    assert sorted(SCHEDULES) == configs("scheduler")


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_sets_the_learning_rate(name, tmp_path, data_root):
    overrides, trainer, expected = SCHEDULES[name]
    options = {"limit_train_batches": 1, "limit_val_batches": 0, **trainer}
    record = Record()
    runner = fit(train_config(tmp_path, data_root, f"scheduler={name}", *overrides), record, **options)
    assert expected(record), record.lrs
    if name == "plateau":
        assert runner.lr_scheduler_configs[0].scheduler.mode == "max"
        assert runner.lr_scheduler_configs[0].monitor == "val/dice"


def test_step_cyclic_is_the_first_place_schedule():
    factors = [StepCyclic()(epoch) for epoch in range(40)]
    assert factors[:12] == [1] * 12 and factors[12:23] == pytest.approx([0.1] * 11)
    assert factors[23:33] == pytest.approx([1, 1, 0.1, 0.1, 0.01] * 2)


# ------------------------------------------------------------------------------------------- augmentations


@pytest.mark.parametrize("name", configs("aug"))
def test_augmentation_changes_training_images(name, tmp_path, data_root):
    cfg = train_config(tmp_path, data_root, f"aug={name}", "data.batch_size=8", "trainer.max_epochs=1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated albumentations names or arguments
        instantiate(cfg.aug)
    record = Record()
    fit(cfg, record, limit_train_batches=2, limit_val_batches=0)
    changed_images = changed_masks = 0
    for batch in record.batches:
        for image_id, image, mask in zip(batch["id"], batch["image"], batch["mask"], strict=True):
            raw_image = read_image(data_root / "train" / f"{image_id}.jpg")
            raw_mask = read_mask(data_root / "train_masks" / f"{image_id}_mask.gif")
            image_changed = not np.array_equal(image.numpy(), raw_image)
            mask_changed = not np.array_equal(mask[0].numpy(), raw_mask)
            assert image_changed or not mask_changed  # the mask never moves without the image
            changed_images += image_changed
            changed_masks += mask_changed
    if name == "none":
        assert changed_images == 0
    else:
        assert changed_images > 0
    if "hflip" in cfg.aug:
        assert changed_masks > 0  # geometric augmentations move the mask too


# --------------------------------------------------------------------------------------- hard-example replay


class StepSizes(pl.Callback):
    """The norm of every optimizer step's parameter update, replays included."""

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.last = self.flat()
        self.norms: list[float] = []
        optimizer.register_step_post_hook(self.after_step)

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.params])

    def after_step(self, optimizer, args, kwargs):
        now = self.flat()
        self.norms.append(float((now - self.last).norm()))
        self.last = now


def test_hard_example_replay_steps_again_on_the_hardest_batch(tmp_path, data_root):
    # plain SGD at LR 1 with gradients clipped to norm 1e-3: every update, replays too, has norm <= 1e-3
    cfg = train_config(
        tmp_path, data_root, "callbacks=hard_examples", "callbacks.hard_examples.every=3", "optimizer=sgd",
        "optimizer.lr=1.0", "optimizer.momentum=0", "optimizer.nesterov=false", "optimizer.weight_decay=0",
        "trainer.gradient_clip_val=1.0e-3", "trainer.max_epochs=1",
    )  # fmt: skip
    calls: list[tuple[tuple[str, ...], float]] = []  # every training_step: the batch's images and its loss
    steps = StepSizes()
    module = build_module(cfg)
    training_step = module.training_step

    def recorded(batch: dict, batch_idx: int) -> torch.Tensor:
        loss = training_step(batch, batch_idx)
        calls.append((tuple(batch["id"]), float(loss.detach())))
        return loss

    module.training_step = recorded
    replay = instantiate(cfg.callbacks.hard_examples)
    runner = fit(cfg, replay, steps, module=module, limit_train_batches=7, limit_val_batches=0)

    assert runner.global_step == 7  # replays are extra steps, not counted
    assert len(calls) == len(steps.norms) == 9  # 7 batches + replays after steps 3 and 6
    for replay, window in ((3, calls[0:3]), (7, calls[4:7])):
        hardest = max(window, key=lambda call: call[1])
        assert calls[replay][0] == hardest[0]
    assert all(0 < norm <= 1.0e-3 * 1.001 for norm in steps.norms), steps.norms
