"""The prediction model: networks of one geometry averaged as probabilities, with hflip TTA, on whole
images or on the windows a second stage's focus places (``carvana.data.focus``), and the loop that predicts
only the images still missing from a prediction folder.

``prediction_trainer`` builds its ``pl.Trainer`` from the ``trainer`` config group (``carvana.config``), the
same settings as training, so DDP, precision and devices are chosen in one place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader
from typing_extensions import override

from carvana import runs
from carvana.config import build_trainer
from carvana.data.buffers import unmap_large_buffers
from carvana.data.datasets import CarvanaDataset, StackedDataset
from carvana.data.focus import Focus
from carvana.data.geometry import Geometry
from carvana.data.kaggle import Sample
from carvana.errors import normalised_weights
from carvana.models import NetworkInput
from carvana.predict.checkpoints import Member, common_focus, common_geometry, load_network
from carvana.predict.map_writer import MapWriter
from carvana.progress import Lines, is_terminal

log = logging.getLogger(__name__)


class PredictionModule(pl.LightningModule):
    """Probability maps of uint8 NHWC batches: mean over TTA passes, weighted mean over networks.

    ``predict_step`` returns ``{"id": [...], "prob": [uint8 (H, W), ...]}`` at each image's original size,
    still on the device: converting to uint8 there moves a quarter of the float32 bytes.

    Args:
        nets: the networks, each giving logits of the same grid.
        geometry: their common geometry, to restore outputs to the original pixels.
        mean: per-channel input mean on the 0..1 scale, as the networks were trained.
        std: per-channel input standard deviation, likewise.
        weights: one per network, normalised to sum 1; None weighs them equally.
        hflip: average each image with its mirror.
        focus: a second stage's: each image arrives stacked with its first stage's map (channel 4), the
            networks predict the windows the focus places on it (``geometry.crop`` sized where the focus
            sizes them), and the focus blends them into the image's map.
        window_batch: windows per forward pass.
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        geometry: Geometry,
        mean: Sequence[float],
        std: Sequence[float],
        weights: Sequence[float] | None = None,
        hflip: bool = True,
        focus: Focus | None = None,
        window_batch: int = 8,
    ):
        super().__init__()
        if not nets:
            raise ValueError("PredictionModule needs at least one network")
        self.nets = nn.ModuleList(nets)
        self.weights = list(normalised_weights(weights, len(nets), "networks"))
        self.geometry, self.hflip = geometry, hflip
        self.focus, self.window_batch = focus, window_batch
        self.network_input = NetworkInput(mean, std)

    @classmethod
    def from_members(cls, group: Sequence[Member], hflip: bool = True) -> PredictionModule:
        """The module of an ensemble of checkpoints, each network rebuilt from its run folder."""
        geometry = common_geometry(group)
        module = group[0].config.module
        return cls(
            [load_network(member) for member in group],
            geometry,
            list(module.mean),
            list(module.std),
            [member.weight for member in group],
            hflip,
            common_focus(group),
        )

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """float32 probabilities (N, 1, h, w) on the network's grid of a uint8 (N, h, w, C) batch.

        The flipped copy is a second pass of N rather than joining the batch: concatenating copied the whole
        float input, and one pass of 2N was slower than two of N (bench/results.md, prediction) and holds
        twice the activations. Sigmoid comes before any averaging; it and the sums run in place. A side
        that is not a multiple of ``geometry.divisor`` (a focus window) is reflect-padded, then cropped back.
        """
        x = self.network_input(image)
        height, width = x.shape[-2:]
        pad_height, pad_width = -height % self.geometry.divisor, -width % self.geometry.divisor
        if pad_height or pad_width:
            x = F.pad(x, (0, pad_width, 0, pad_height), mode="reflect")
        flipped = x.flip(-1) if self.hflip else None
        total: torch.Tensor | None = None
        for net, weight in zip(self.nets, self.weights, strict=True):
            prob = net(x).float().sigmoid_()
            if flipped is not None:
                prob.add_(net(flipped).float().sigmoid_().flip(-1)).div_(2)
            total = prob.mul_(weight) if total is None else total.add_(prob, alpha=weight)
        assert total is not None, "the constructor requires at least one network"
        return total[..., :height, :width]

    def focused(self, image: torch.Tensor) -> torch.Tensor:
        """float32 (H, W) probabilities of one uint8 (H, W, 3 + 1) image stacked with its first stage's map:
        the focus's windows predicted, ``window_batch`` at a time, and blended."""
        assert self.focus is not None
        coarse = image[..., 3]
        windows = self.focus.windows(coarse.cpu().numpy(), self.geometry.crop)
        crops = [image[t : t + h, x : x + w, : self.focus.channels] for t, x, h, w in windows]
        probs: list[torch.Tensor] = []
        for start in range(0, len(crops), self.window_batch):
            probs += self(torch.stack(crops[start : start + self.window_batch]))[:, 0].unbind()
        return self.focus.blend(coarse, windows, probs)

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        sizes = zip(batch["height"].tolist(), batch["width"].tolist(), strict=True)
        if self.focus is not None:
            maps = [
                self.focused(image[:height, :width]).mul_(255).round_().to(torch.uint8)
                for image, (height, width) in zip(batch["image"], sizes, strict=True)
            ]
            return {"id": list(batch["id"]), "prob": maps}
        probs = self(batch["image"])
        maps = [
            self.geometry.restore(prob[None], height, width)[0, 0]
            .mul(255)
            .round_()
            .to(torch.uint8)
            .contiguous()
            for prob, (height, width) in zip(probs, sizes, strict=True)
        ]
        return {"id": list(batch["id"]), "prob": maps}


class PredictionLines(pl.Callback):
    """Where stdout is not a terminal (a SLURM log), the predict loop's progress as ``carvana.progress.Lines``
    on stdout from global rank 0, counting its batches, and the progress bar off: there it would print only
    its last frame, at the end.

    Args:
        description: the start of every line.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.active = False
        self._lines: Lines | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.active = not is_terminal(sys.stdout)
        if self.active and trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.disable()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and trainer.is_global_zero:
            self._lines = Lines(sum(trainer.num_predict_batches), self.description, sys.stdout)

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._lines is not None:
            self._lines.advance()


def predict_missing(
    trainer: pl.Trainer,
    module: PredictionModule,
    samples: Sequence[Sample],
    writer: MapWriter,
    since: float,
    batch_size: int = 2,
    num_workers: int = 2,
    maps: Callable[[Sequence[Sample]], list[list[Path]]] | None = None,
) -> int:
    """Predict the samples whose map is missing from ``writer.out_dir`` (or older than ``since``).

    Done images are left out before anything is loaded, so a rerun continues an interrupted one. Under DDP
    Lightning shards predict data with its unrepeated distributed sampler (each image on one rank), which
    needs an image per rank: when fewer remain, finished ones are predicted again. ``maps`` gives the second
    level's probability-map channels of the samples. Returns the count done.
    """
    if writer not in trainer.callbacks:
        raise ValueError("the trainer must have the MapWriter among its callbacks")
    todo = runs.pending(samples, writer.out_dir, since, writer.format)
    log.info("%s: %d of %d images to predict", writer.out_dir, len(todo), len(samples))
    if not todo:
        return 0
    unmap_large_buffers()  # this process predicts for as long as the test set lasts: keep its memory flat
    if len(todo) < trainer.world_size:
        done = [sample for sample in samples if sample not in todo]
        todo += done[: trainer.world_size - len(todo)]
    transform = A.Compose(module.geometry.eval())
    dataset = StackedDataset(todo, maps(todo), transform) if maps else CarvanaDataset(todo, transform)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=torch.cuda.is_available()
    )
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return len(todo)


def prediction_trainer(
    trainer: DictConfig,
    writer: MapWriter,
    root_dir: str | Path,
    callbacks: Sequence[pl.Callback] = (),
    **overrides: Any,
) -> pl.Trainer:
    """A trainer of the ``trainer`` group that only predicts: ``writer`` writes the maps, nothing else is
    logged or checkpointed but by ``callbacks`` (predict.py's heartbeat), progress is a bar in a terminal
    and ``PredictionLines`` in a log; ``overrides`` replace any of its settings (``accelerator``...)."""
    return build_trainer(
        trainer,
        callbacks=[writer, PredictionLines(f"predicting {writer.out_dir}, batches"), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(root_dir),
        **overrides,
    )
