"""Wall-time budgets: the LR schedule over ``trainer.max_time``, the cpu_small512 recipe's stop, and the
weight average that the budget's share starts."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from carvana.config import instantiate, native_cpu_bf16
from carvana.train.callbacks import EMA, ProgressiveResize, WarmupCosineLR
from tests.test_recipes import CONF, LR, Record, build_module, fit, train_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Validations(pl.Callback):
    """When validation ran, in seconds since training started."""

    def __init__(self):
        self.start, self.times = 0.0, []

    def on_train_start(self, trainer, pl_module):
        self.start = time.monotonic()

    def on_validation_epoch_end(self, trainer, pl_module):
        self.times.append(time.monotonic() - self.start)


def test_warmup_then_cosine_over_the_planned_steps(tmp_path, data_root):
    record = Record()
    cfg = train_config(tmp_path, data_root, "trainer.max_epochs=4")
    fit(cfg, WarmupCosineLR(warmup=0.25, final=0.0), record, limit_train_batches=3, limit_val_batches=0)
    peak = record.lrs.index(max(record.lrs))
    assert len(record.lrs) == 12 and peak == 3  # the first step after a quarter of the 12 steps
    assert record.lrs[:peak] == sorted(record.lrs[:peak]) and record.lrs[0] < 0.1 * LR
    assert record.lrs[peak:] == sorted(record.lrs[peak:], reverse=True)
    assert max(record.lrs) == pytest.approx(LR) and record.lrs[-1] < 0.05 * LR


def test_factor_reaches_final_at_the_end_of_the_budget():
    schedule = WarmupCosineLR(warmup=0.1, final=0.2)
    assert schedule.factor(0.1) == pytest.approx(1.0)
    assert schedule.factor(1.0) == pytest.approx(0.2)
    assert 0.2 < schedule.factor(0.5) < 1.0


def test_recipe_trains_for_its_budget_then_validates_once(tmp_path, data_root):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "+experiment=cpu_small512", "model=linknet18", "logger=none", f"paths.output_dir={tmp_path}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"data.root={data_root}", "data.num_workers=0",
            "data.geometry.size=[64,64]", "data.batch_size=4", "trainer.max_time.minutes=0.05",
        ])  # fmt: skip
    record, validations = Record(), Validations()
    recipe = [instantiate(cfg.callbacks[name]) for name in ("channels_last", "lr_budget")]
    runner = fit(cfg, *recipe, record, validations)
    assert runner.precision == ("bf16-mixed" if native_cpu_bf16() else "32-true")  # the CPU decides
    assert len(validations.times) == 1 and validations.times[0] >= 3.0  # once, when the 3 s were spent
    assert len(record.lrs) > 3 and record.lrs[-1] < 0.05 * LR  # decayed over the budget, not over epochs
    convs = [m.weight for m in runner.lightning_module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


class RawWeights(pl.Callback):
    """A copy of one weight tensor after every optimizer step."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(next(pl_module.net.parameters()).detach().clone())


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_leaves_the_average_of_the_steps_after_its_start(tmp_path, data_root, warmup):
    decay, raw = 0.3, RawWeights()
    cfg = train_config(tmp_path, data_root, "trainer.max_epochs=1")
    ema = EMA(decay=decay, start=0.5, warmup=warmup)
    runner = fit(cfg, raw, ema, limit_train_batches=8, limit_val_batches=0)
    average = raw.steps[3].clone()  # the first update, after 4 of the 8 steps, copies the weights
    for n, weights in enumerate(raw.steps[4:], start=1):
        weight = min(decay, (1 + n) / (10 + n)) if warmup else decay  # 0.18, 0.25, 0.3, 0.3 with warm-up
        average = weight * average + (1 - weight) * weights
    trained = next(runner.lightning_module.net.parameters()).detach()
    assert torch.allclose(trained, average, atol=1e-6)
    assert not torch.allclose(trained, raw.steps[-1])


def test_progressive_resize_trains_small_first_then_at_full_size(tmp_path, data_root):
    cfg = train_config(tmp_path, data_root, "trainer.max_epochs=1")
    module, seen = build_module(cfg), []
    training_step = module.training_step

    def recorded(batch: dict, batch_idx: int) -> torch.Tensor:
        seen.append(
            (tuple(batch["image"].shape), tuple(batch["mask"].shape), batch["mask"].unique().tolist())
        )
        return training_step(batch, batch_idx)

    module.training_step = recorded
    resize = ProgressiveResize(sizes=[[32, 32], [32, 64]], until=[0.25, 0.5])
    fit(cfg, resize, module=module, limit_train_batches=8, limit_val_batches=0)
    shapes = [(image[1:3], mask[2:]) for image, mask, _ in seen]
    assert shapes == [((32, 32),) * 2] * 2 + [((32, 64),) * 2] * 2 + [((64, 96),) * 2] * 4
    assert all(set(values) <= {0, 1} for _, _, values in seen)
