"""The members of a prediction: trained checkpoints, their weights, and the networks rebuilt from their runs.

Each checkpoint's network is rebuilt from its run folder's ``.hydra/config.yaml`` (never downloading
pretrained weights: they come from the checkpoint), so a prediction needs nothing but the run folders.
Models trained with different geometries are predicted separately and combined with ``carvana ensemble``.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from carvana import runs
from carvana.config import build_model, instantiate, load_run_config
from carvana.data import synthetic
from carvana.data.focus import Focus
from carvana.data.geometry import Geometry
from carvana.errors import CarvanaError, normalised_weights

CheckpointSpec = str | Sequence[str | Mapping[str, object]]


@dataclass(frozen=True)
class Member:
    """One checkpoint of an ensemble, its probability weight, and the config of the run that trained it."""

    checkpoint: Path
    weight: float
    config: DictConfig

    @property
    def run_dir(self) -> Path:
        return runs.run_of_checkpoint(self.checkpoint)

    @property
    def geometry(self) -> Geometry:
        return instantiate(self.config.data.geometry)

    @property
    def focus_config(self) -> dict | None:
        """The run's ``data.focus`` as plain data: None for a whole-image model."""
        focus = self.config.data.get("focus")
        return None if focus is None else OmegaConf.to_container(focus, resolve=True)


def data_root(config: DictConfig) -> Path:
    """The Kaggle-layout folder a run was trained on, (re)generating it when it is the synthetic set."""
    if config.data.root:
        return Path(config.data.root)
    return synthetic.ensure(synthetic.default_root(config.paths.cache_dir), **config.data.synthetic)


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
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise CarvanaError(f"checkpoints: no checkpoint matches {pattern}")
        found += [(Path(match).resolve(), weight) for match in matches]
    paths = [path for path, _ in found]
    twice = next((path for path in paths if paths.count(path) > 1), None)
    if twice is not None:
        raise CarvanaError(f"checkpoints: {twice} is listed twice")
    weights = normalised_weights([weight for _, weight in found], len(found), "checkpoints")
    return [
        Member(path, weight, load_run_config(runs.run_of_checkpoint(path)))
        for (path, _), weight in zip(found, weights, strict=True)
    ]


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
                "predict them separately, then combine the folders with carvana ensemble"
            )
        for key in ("mean", "std"):
            if list(member.config.module[key]) != list(first.config.module[key]):
                raise CarvanaError(f"{member.checkpoint} and {first.checkpoint} differ in module.{key}")
    return first.geometry


def common_focus(group: Sequence[Member]) -> Focus | None:
    """The second-stage focus all members share (None for whole-image models); mixing them is an error."""
    first = group[0]
    for member in group[1:]:
        if member.focus_config != first.focus_config:
            raise CarvanaError(
                f"{member.checkpoint} has data.focus {member.focus_config}, {first.checkpoint} "
                f"{first.focus_config}: predict them separately, then combine the folders (carvana ensemble)"
            )
    return None if first.focus_config is None else instantiate(first.config.data.focus)


def load_network(member: Member) -> nn.Module:
    """The member's network, built from its run's ``model`` node with ``encoder_weights=null``."""
    model = OmegaConf.to_container(member.config.model, resolve=True)
    if "encoder_weights" in model:
        model["encoder_weights"] = None
    net = build_model(OmegaConf.create(model))
    state = runs.read_weights(member.checkpoint, prefix="net.")
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CarvanaError(f"{member.checkpoint}: its weights do not fit its run's model ({first})") from None
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
        **({"focus": group[0].focus_config} if group[0].focus_config else {}),
    }
