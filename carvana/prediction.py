"""The prediction model: trained checkpoints of one geometry, averaged as probabilities, with hflip TTA.

Each checkpoint's network is rebuilt from its run folder's ``.hydra/config.yaml`` (never downloading
pretrained weights: they come from the checkpoint), so a prediction needs nothing but the run folders.
Models trained with different geometries are predicted separately and combined with ``carvana.ensemble``.
"""

from __future__ import annotations

import glob
import logging
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from carvana import synthetic
from carvana.dataset import CarvanaDataset, Sample, StackedDataset
from carvana.errors import CarvanaError
from carvana.geometry import Geometry
from carvana.instantiate import build_model, instantiate
from carvana.io import unmap_large_buffers
from carvana.module import NetworkInput
from carvana.writer import PngWriter, pending

log = logging.getLogger(__name__)

RUN_CONFIG = Path(".hydra") / "config.yaml"
CheckpointSpec = str | Sequence[str | Mapping[str, object]]


@dataclass(frozen=True)
class Member:
    """One checkpoint of an ensemble, its probability weight, and the config of the run that trained it."""

    checkpoint: Path
    weight: float
    config: DictConfig

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.parent.parent

    @property
    def geometry(self) -> Geometry:
        return instantiate(self.config.data.geometry)


def run_config(run_dir: str | Path) -> DictConfig:
    """A run folder's composed training config (its ``${hydra:...}`` entries stay unresolved)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise CarvanaError(
            f"{run_dir}: no {RUN_CONFIG}; checkpoints must stay in their run folder "
            "(<run>/checkpoints/<name>.ckpt beside <run>/.hydra/)"
        )
    return OmegaConf.load(path)


def data_root(config: DictConfig) -> Path:
    """The Kaggle-layout folder a run was trained on, (re)generating it when it is the synthetic set."""
    if config.data.root:
        return Path(config.data.root)
    return synthetic.ensure(Path(config.paths.cache_dir) / "synthetic", **config.data.synthetic)


def _entries(spec: CheckpointSpec) -> list[tuple[str, float]]:
    if isinstance(spec, DictConfig | ListConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        return [(spec, 1.0)]
    entries = []
    for item in spec:
        if isinstance(item, str):
            entries.append((item, 1.0))
        elif isinstance(item, Mapping) and set(item) <= {"path", "weight"} and "path" in item:
            entries.append((str(item["path"]), float(item.get("weight", 1.0))))
        else:
            raise CarvanaError(f"checkpoints: {item!r} is neither a path/glob nor {{path: ..., weight: ...}}")
    return entries


def members(spec: CheckpointSpec) -> list[Member]:
    """The checkpoints a glob, or a list of globs / ``{path, weight}`` entries, names (weight 1 by default).

    A glob's weight goes to each of its matches; the weights are normalised to sum 1.
    """
    found: list[tuple[Path, float]] = []
    for pattern, weight in _entries(spec):
        if not (math.isfinite(weight) and weight >= 0):
            raise CarvanaError(f"checkpoints: weight {weight} of {pattern} must be finite and >= 0")
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise CarvanaError(f"checkpoints: no checkpoint matches {pattern}")
        found += [(Path(match).resolve(), weight) for match in matches]
    paths = [path for path, _ in found]
    twice = next((path for path in paths if paths.count(path) > 1), None)
    if twice is not None:
        raise CarvanaError(f"checkpoints: {twice} is listed twice")
    total = math.fsum(weight for _, weight in found)
    if total == 0:
        raise CarvanaError("checkpoints: the weights are all zero")
    return [Member(path, weight / total, run_config(path.parent.parent)) for path, weight in found]


def eval_geometry(geometry: Geometry) -> dict:
    """What decides the network's input grid at prediction time: crop-trained models predict padded."""
    if geometry.mode == "resize":
        return {"mode": "resize", "size": list(geometry.size)}
    return {"mode": "pad", "divisor": geometry.divisor}


def common_geometry(group: Sequence[Member]) -> Geometry:
    """The geometry all members predict with; mixing geometries (or normalisations) is an error."""
    first = group[0]
    expected = eval_geometry(first.geometry)
    for member in group[1:]:
        geometry = eval_geometry(member.geometry)
        if geometry != expected:
            raise CarvanaError(
                f"{member.checkpoint} predicts with geometry {geometry}, {first.checkpoint} with {expected}: "
                "predict them separately, then combine the folders with python -m carvana.ensemble"
            )
        for key in ("mean", "std"):
            if list(member.config.module[key]) != list(first.config.module[key]):
                raise CarvanaError(f"{member.checkpoint} and {first.checkpoint} differ in module.{key}")
    return first.geometry


def load_network(member: Member) -> nn.Module:
    """The member's network, built from its run's ``model`` node with ``encoder_weights=null``."""
    model = OmegaConf.to_container(member.config.model, resolve=True)
    if "encoder_weights" in model:
        model["encoder_weights"] = None
    net = build_model(OmegaConf.create(model))
    try:
        checkpoint = torch.load(member.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        state = {key[4:]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
        net.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CarvanaError(f"{member.checkpoint}: cannot load its network ({first})") from None
    return net


def describe(group: Sequence[Member], hflip: bool, stage: str) -> dict:
    """The manifest of a prediction folder: what made its maps."""
    geometry = common_geometry(group)
    return {
        "stage": stage,
        "checkpoints": [str(member.checkpoint) for member in group],
        "weights": [member.weight for member in group],
        "tta": {"hflip": hflip},
        "geometry": eval_geometry(geometry),
    }


class PredictionModule(pl.LightningModule):
    """Probability maps of uint8 NHWC batches: mean over TTA passes, weighted mean over networks.

    ``predict_step`` returns ``{"id": [...], "prob": [uint8 (H, W), ...]}`` at each image's original size,
    still on the device: converting to uint8 there moves a quarter of the float32 bytes.
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        geometry: Geometry,
        mean: Sequence[float],
        std: Sequence[float],
        weights: Sequence[float] | None = None,
        hflip: bool = True,
    ):
        super().__init__()
        weights = list(weights) if weights is not None else [1.0] * len(nets)
        total = math.fsum(weights)
        if not nets or len(weights) != len(nets) or not total > 0:
            raise CarvanaError(
                f"weights {weights} for {len(nets)} networks: need one each, with a positive sum"
            )
        self.nets = nn.ModuleList(nets)
        self.weights = [weight / total for weight in weights]
        self.geometry, self.hflip = geometry, hflip
        self.network_input = NetworkInput(mean, std)

    @classmethod
    def from_members(cls, group: Sequence[Member], hflip: bool = True) -> PredictionModule:
        geometry = common_geometry(group)
        module = group[0].config.module
        return cls(
            [load_network(member) for member in group],
            geometry,
            list(module.mean),
            list(module.std),
            [member.weight for member in group],
            hflip,
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """float32 probabilities (N, 1, h, w) on the network's grid of a uint8 (N, h, w, C) batch.

        The flipped copy is a second pass of N rather than joining the batch: concatenating copied the whole
        float input, and one pass of 2N was slower than two of N (bench/results.md, prediction) and holds
        twice the activations. Sigmoid comes before any averaging; it and the sums run in place.
        """
        x = self.network_input(image)
        flipped = x.flip(-1) if self.hflip else None
        total: torch.Tensor | None = None
        for net, weight in zip(self.nets, self.weights, strict=True):
            prob = net(x).float().sigmoid_()
            if flipped is not None:
                prob.add_(net(flipped).float().sigmoid_().flip(-1)).div_(2)
            total = prob.mul_(weight) if total is None else total.add_(prob, alpha=weight)
        assert total is not None, "the constructor requires at least one network"
        return total

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch["image"])
        sizes = zip(batch["height"].tolist(), batch["width"].tolist(), strict=True)
        maps = [
            self.geometry.restore(prob[None], height, width)[0, 0]
            .mul(255)
            .round_()
            .to(torch.uint8)
            .contiguous()
            for prob, (height, width) in zip(probs, sizes, strict=True)
        ]
        return {"id": list(batch["id"]), "prob": maps}


def predict_missing(
    trainer: pl.Trainer,
    module: PredictionModule,
    samples: Sequence[Sample],
    writer: PngWriter,
    since: float,
    batch_size: int = 2,
    num_workers: int = 2,
    maps: Callable[[Sequence[Sample]], list[list[Path]]] | None = None,
) -> int:
    """Predict the samples whose PNG is missing from ``writer.out_dir`` (or older than ``since``).

    Done images are left out before anything is loaded, so a rerun continues an interrupted one. Under DDP
    Lightning shards predict data with its unrepeated distributed sampler (each image on one rank), which
    needs an image per rank: when fewer remain, finished ones are predicted again. ``maps`` gives the second
    level's probability-map channels of the samples. Returns the count done.
    """
    if writer not in trainer.callbacks:
        raise ValueError("the trainer must have the PngWriter among its callbacks")
    todo = pending(samples, writer.out_dir, since)
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
