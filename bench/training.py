"""Case 1: images/s of a training step, the project's Lightning module against a plain PyTorch loop.

Both train the same network from the same weights on the same uint8 batches held in memory (real images
resized), with the same loss (``carvana.train.losses.BceDice``), Adam and normalisation on the device.
Lightning runs without progress bar, logger, checkpointing, model summary and validation: those are per-epoch
or cosmetic costs a user can turn off, not the per-step framework cost this case measures. Both loops time
every step after their warm-up steps, end to end, so setup (Trainer construction, the first oneDNN kernels)
is left out and every per-step cost (batch fetch, hooks, logging, backward, optimizer) is in.
"""

from __future__ import annotations

import copy
import functools
import itertools
import statistics
import time
from collections.abc import Callable

import cv2
import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.data import MEAN, STD, real_samples
from bench.harness import Case, Settings, compare, interleave
from carvana.data.geometry import Geometry
from carvana.data.kaggle import read_image, read_mask
from carvana.models import NetworkInput
from carvana.train.losses import BceDice
from carvana.train.segmentation_module import SegmentationModule

LR = 1e-4


class InMemory(Dataset):
    """``count`` items cycled from a few decoded, resized pairs, shaped as ``CarvanaDataset``'s items."""

    def __init__(self, size: tuple[int, int], pairs: int, count: int):
        height, width = size
        self.items = []
        for sample in real_samples(pairs):
            image = cv2.resize(read_image(sample.image), (width, height), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(read_mask(sample.mask), (width, height), interpolation=cv2.INTER_NEAREST)
            self.items.append({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)[None]})
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return self.items[index % len(self.items)]


class StepClock(pl.Callback):
    """Lightning's side of the timing: the time and loss at the end of every training step (once the
    device has finished it)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: dict, batch: dict, index: int
    ) -> None:
        if module.device.type == "cuda":  # a step's time is its compute, not its launch
            torch.cuda.synchronize(module.device)
        self.losses.append(float(outputs["loss"]))
        self.times.append(time.perf_counter())


def images_per_second(times: list[float], warmup: int, batch: int) -> float:
    """``batch`` over the median duration of the steps after the first ``warmup``: every per-step cost is
    in each step, and a burst of load from other jobs lands in a few steps, which the median leaves out."""
    return batch / statistics.median(b - a for a, b in itertools.pairwise(times[warmup - 1 :]))


def lightning(
    net: nn.Module,
    loader: DataLoader,
    steps: int,
    clock: StepClock,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> None:
    """The project's training: SegmentationModule under pl.Trainer, with only the per-step machinery on."""
    module = SegmentationModule(
        net, BceDice(), functools.partial(torch.optim.Adam, lr=LR), Geometry(), list(MEAN), list(STD)
    )
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loader)


def plain(net: nn.Module, loader: DataLoader, steps: int, clock: StepClock) -> None:
    """What a user writes without a framework, with the same loss, optimizer and input normalisation. The
    project's own ``NetworkInput``: ``(x - mean) / std`` differs from it by float rounding, which Adam's
    first steps can grow past the tolerance of the same-losses check."""
    loss_fn = BceDice()
    network_input = NetworkInput(MEAN, STD)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    net.train()
    for step, batch in enumerate(loader):
        if step == steps:
            break
        loss = loss_fn(net(network_input(batch["image"])), batch["mask"].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clock.losses.append(loss.item())
        clock.times.append(time.perf_counter())


def run(settings: Settings) -> Case:
    size, batch, warmup, steps = ((64, 96), 2, 1, 3) if settings.smoke else ((128, 192), 4, 2, 14)
    case = Case("training", "Training step: SegmentationModule + pl.Trainer against a plain PyTorch loop")
    torch.manual_seed(0)
    template = smp.Linknet("resnet18", encoder_weights=None, classes=1)
    loader = DataLoader(InMemory(size, 8, steps * batch), batch_size=batch, num_workers=0)
    case.setup = {
        "model": "smp Linknet resnet18 (random init)",
        "input": f"{size[0]}x{size[1]} uint8, batch {batch}, in memory",
        "steps": f"{steps} per run, the first {warmup} untimed",
        "threads": torch.get_num_threads(),
    }
    clocks: dict[str, list[StepClock]] = {"Lightning": [], "plain loop": []}

    def timed(name: str, train: Callable[[nn.Module, DataLoader, int, StepClock], None]) -> float:
        clock = StepClock()
        train(copy.deepcopy(template), loader, steps, clock)
        clocks[name].append(clock)
        return images_per_second(clock.times, warmup, batch)

    runs = interleave(
        {
            "Lightning": lambda: timed("Lightning", lightning),
            "plain loop": lambda: timed("plain loop", plain),
        },
        settings,
    )
    head = compare("vs plain PyTorch loop", "images/s", runs, "Lightning", "plain loop", 0.97)
    case.comparisons.append(head)
    mine, theirs = clocks["Lightning"][0].losses, clocks["plain loop"][0].losses
    case.checks["same_losses"] = len(mine) == len(theirs) == steps and all(
        abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(mine, theirs, strict=True)
    )
    case.notes += [
        "Lightning ran with enable_progress_bar, enable_checkpointing and enable_model_summary False, "
        "logger=False and no validation, for a like-for-like step; both loops' losses agree step by step.",
        f"per step: {1e3 * batch / head.project:.0f} ms with Lightning, {1e3 * batch / head.baseline:.0f} ms "
        "for the plain loop",
    ]
    return case
