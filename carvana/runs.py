"""The on-disk contract between the stages: run folders, prediction folders and the files in them.

Every stage reads and writes what another stage made through this module alone, so a file name, a folder
layout or the map format is spelled here and nowhere else in the package::

    <output_root>/<experiment>/            an experiment: a model or a recipe
      wandb_id                             the id of its W&B ``cv`` run (the CV report)
      fold<k>/                             a run folder: one fold of it
        .hydra/config.yaml                 the composed training config
        checkpoints/best.ckpt, last.ckpt   best val/dice; the resume point
        folds.csv                          car,fold for every training car
        fold_score.json                    best val/dice and its epoch
        oof/                               a prediction folder: the fold's validation cars
        oof_score.json                     their mean per-image Dice, and each image's
        wandb_id, wandb/                   the fold's W&B run

    <prediction folder>/                   predict.py, the OOF pass, ensembles
      <image_id>.png                       8-bit probability (v/255) at the original resolution
      manifest.json                        what made the maps; written last, so it means "complete"
      submission.csv                       predict.py's submission

Each file is written whole or not at all (``carvana.files``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from carvana.errors import CarvanaError
from carvana.files import atomic_write_bytes, atomic_write_text, write_csv

RUN_CONFIG = Path(".hydra") / "config.yaml"
CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"
LAST = "last.ckpt"
FOLDS = "folds.csv"
FOLD_SCORE = "fold_score.json"
OOF = "oof"
OOF_SCORE = "oof_score.json"
WANDB_ID = "wandb_id"
WANDB_DIR = "wandb"
MANIFEST = "manifest.json"
MAP_SUFFIX = ".png"
SUBMISSION = "submission.csv"
CV_REPORT = "cv_report"  # .md, .csv and .png beside the experiments
FOLD_DIR = re.compile(r"fold(\d+)")

# The manifest entries that decide a prediction folder's maps: one made otherwise is never continued.
IDENTITY = ("checkpoints", "weights", "tta", "geometry")

log = logging.getLogger(__name__)


class HasImageId(Protocol):
    """Anything naming one image, such as ``carvana.data.kaggle.Sample``."""

    @property
    def image_id(self) -> str: ...


Item = TypeVar("Item", bound=HasImageId)


# Run folders.


def fold_dir(experiment: str | Path, fold: int) -> Path:
    """``<experiment>/fold<k>``: where fold ``fold`` of an experiment trains."""
    return Path(experiment) / f"fold{fold}"


def checkpoint(run_dir: str | Path, name: str = BEST) -> Path:
    """A checkpoint of a run folder, ``<run>/checkpoints/<name>``."""
    return Path(run_dir) / CHECKPOINTS / name


def run_of_checkpoint(path: str | Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``)."""
    return Path(path).parent.parent


def experiment_of(run_dir: str | Path) -> str:
    """The experiment name of a run folder (``<output_root>/<experiment>/fold<k>``)."""
    return Path(run_dir).resolve().parent.name


def run_folders(root: str | Path) -> list[Path]:
    """Every ``fold<k>`` folder under ``root`` (``root`` itself included) that holds a ``fold_score.json``."""
    found = []
    for folder, subdirs, files in os.walk(root):
        if FOLD_DIR.fullmatch(Path(folder).name) and FOLD_SCORE in files:
            found.append(Path(folder))
            subdirs.clear()  # checkpoints, oof maps, W&B files
        else:
            subdirs[:] = [name for name in subdirs if not name.startswith(".") and name != WANDB_DIR]
    return sorted(found)


def read_folds(path: str | Path) -> dict[str, int]:
    """A ``folds.csv``: car -> fold."""
    try:
        with open(path, newline="") as f:
            return {row["car"]: int(row["fold"]) for row in csv.DictReader(f)}
    except (OSError, KeyError, ValueError) as error:
        raise CarvanaError(f"{path}: unreadable folds table ({error})") from None


def write_folds(path: str | Path, table: Mapping[str, int]) -> Path:
    """``folds.csv`` with columns car, fold, sorted by car."""
    return write_csv(path, ("car", "fold"), sorted(table.items()))


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON record of a run or prediction folder; an unreadable one is one error naming it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CarvanaError(f"{path}: unreadable ({error})") from None
    if not isinstance(record, dict):
        raise CarvanaError(f"{path}: not a JSON object")
    return record


def write_json(path: str | Path, record: Mapping[str, Any]) -> Path:
    """A JSON record, indented, written whole."""
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def wandb_id(folder: str | Path) -> str:
    """The folder's W&B id, created once, so that a resumed (or requeued) fold logs into the same W&B run.

    A new id is the one a W&B sweep agent chose for this run (``WANDB_RUN_ID``) if any: W&B ignores ours then.
    """
    path = Path(folder) / WANDB_ID
    if path.is_file():
        return path.read_text().strip()
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


# Prediction folders.


def map_path(folder: str | Path, image_id: str) -> Path:
    """Where a prediction folder keeps the map of ``image_id``."""
    return Path(folder) / f"{image_id}{MAP_SUFFIX}"


def map_ids(folder: str | Path) -> list[str]:
    """The image ids of the maps in a prediction folder, sorted."""
    return sorted(entry.name[: -len(MAP_SUFFIX)] for entry in os.scandir(folder) if _is_map(entry.name))


def _is_map(name: str) -> bool:
    return name.endswith(MAP_SUFFIX) and not name.startswith(".")


def read_map(path: str | Path) -> np.ndarray:
    """A probability map as uint8 (H, W) (v means v/255), or one error line naming the file."""
    prob = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if prob is None:
        raise CarvanaError(f"cannot read prediction {path} as an image")
    return prob


def encode_map(prob: np.ndarray) -> bytes:
    """A uint8 (H, W) map in the folder format.

    OpenCV's default PNG settings (level 1, Z_RLE strategy) beat IMWRITE_PNG_COMPRESSION=1, which also
    switches to the default strategy: 8 ms and 160 kB against 20 ms and 200 kB (decoding costs 5 ms more).
    """
    ok, png = cv2.imencode(MAP_SUFFIX, prob)
    if not ok:
        raise CarvanaError(f"PNG encoding of a {prob.dtype} {prob.shape} map failed")
    return png.tobytes()


def write_map(folder: str | Path, image_id: str, prob: np.ndarray) -> Path:
    """Write the map of ``image_id`` into a prediction folder, whole."""
    return atomic_write_bytes(map_path(folder, image_id), encode_map(prob))


def pending(items: Sequence[Item], folder: str | Path, since: float = 0.0) -> list[Item]:
    """The items without a map in ``folder`` modified at or after ``since`` (a POSIX time).

    ``since`` is the newest checkpoint's mtime: a map older than its model is stale and is predicted again.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return list(items)
    done = {
        entry.name for entry in os.scandir(folder) if _is_map(entry.name) and entry.stat().st_mtime >= since
    }
    return [item for item in items if f"{item.image_id}{MAP_SUFFIX}" not in done]


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (an unfinished or a new folder)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return read_json(path)


def made_otherwise(folder: str | Path, manifest: Mapping[str, Any], keys: Sequence[str] = IDENTITY) -> bool:
    """Whether ``folder`` holds finished maps made otherwise: its manifest differs in one of ``keys``."""
    old = read_manifest(folder)
    return old is not None and any(old.get(key) != manifest[key] for key in keys)


def refuse_made_otherwise(
    folder: str | Path, manifest: Mapping[str, Any], keys: Sequence[str] = IDENTITY
) -> None:
    """One error when ``folder`` holds maps made otherwise: a new output must not mix with them."""
    if made_otherwise(folder, manifest, keys):
        raise CarvanaError(
            f"{folder} already holds other predictions (its {MANIFEST} differs in {', '.join(keys)}); "
            "write to a new folder or delete that one"
        )


def write_manifest(folder: str | Path, items: Sequence[HasImageId], manifest: Mapping[str, Any]) -> bool:
    """Write ``manifest`` (plus the image count) once every item has its map; False when some are missing."""
    missing = pending(items, folder)
    if missing:
        log.warning(
            "%s: %d of %d images have no map yet; rerun to finish them", folder, len(missing), len(items)
        )
        return False
    write_json(Path(folder) / MANIFEST, {**manifest, "images": len(items)})
    return True
