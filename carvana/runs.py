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
        heartbeat.json                     the training process's pulse: who, when, how far, its state
        oof_worst/, oof_worst.png          carvana gallery: the K lowest-Dice OOF images, their sheet
        wandb_id, wandb/                   the fold's W&B run

    <prediction folder>/                   predict.py, the OOF pass, ensembles
      <image_id>.png                       8-bit probability (v/255) at the original resolution
      manifest.json                        what made the maps; written last, so it means "complete"
      heartbeat.json                       predict.py's pulse: the image count and checkpoints too
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
import socket
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import cv2
import numpy as np

from carvana.errors import CarvanaError, check_folder
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
LEADERBOARD = "lb.json"  # an experiment's Kaggle scores, recorded by carvana lb
HEARTBEAT = "heartbeat.json"  # a training or prediction process's pulse (carvana.train.callbacks.Heartbeat)
OOF_WORST = "oof_worst"  # carvana gallery of <run>/oof: overlays in <run>/oof_worst/, <run>/oof_worst.png
WORST_SUFFIX = "_worst"  # carvana gallery of any other prediction folder: <folder>_worst/, <folder>_worst.png
WORST_LIST = "worst.csv"  # the gallery's images, worst first, in its folder
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


def read_weights(path: str | Path, prefix: str = "") -> dict[str, Any]:
    """A checkpoint's ``state_dict`` entries under ``prefix`` (stripped), tensors and plain data only: a
    checkpoint is a pickle, and teams share them, so ``weights_only=True`` refuses anything that could run.
    One ``CarvanaError`` naming the file otherwise."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CarvanaError(f"{path}: not a loadable checkpoint of plain weights ({first})") from None
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def experiment_of(run_dir: str | Path) -> str:
    """The experiment name of a run folder (``<output_root>/<experiment>/fold<k>``)."""
    return Path(run_dir).resolve().parent.name


def run_folders(root: str | Path, started: bool = False) -> list[Path]:
    """Every ``fold<k>`` folder under ``root`` (``root`` itself included) that holds a ``fold_score.json``;
    with ``started``, every ``fold<k>`` folder (a fold still in its first epoch, or killed in it, too)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        if FOLD_DIR.fullmatch(Path(folder).name) and (started or FOLD_SCORE in files):
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


class Record(dict[str, Any]):
    """A JSON record read from ``path``: an entry it lacks is one error naming the file and the entry, not
    a ``KeyError`` traceback, wherever a stage indexes it (a record of an older version, or hand-edited)."""

    def __init__(self, path: Path, entries: Mapping[str, Any]):
        super().__init__(entries)
        self.path = path

    def __missing__(self, key: str) -> NoReturn:
        raise CarvanaError(f"{self.path}: no {key!r} entry (written by another version, or edited?)")


def read_json(path: str | Path) -> Record:
    """A JSON record of a run or prediction folder; an unreadable one is one error naming it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CarvanaError(f"{path}: unreadable ({error})") from None
    if not isinstance(record, dict):
        raise CarvanaError(f"{path}: not a JSON object")
    return Record(Path(path), record)


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


# Heartbeats.


def read_heartbeat(folder: str | Path) -> Record | None:
    """A run or prediction folder's heartbeat, or None when it has none (made before heartbeats existed,
    by a stage that writes none, or whose process died before its first beat)."""
    path = Path(folder) / HEARTBEAT
    return read_json(path) if path.is_file() else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        return None


def this_process() -> dict[str, Any]:
    """Who writes a heartbeat: pid, host and PID namespace (containers sharing a host name, such as those
    of one Kubernetes pod, may number their processes apart)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_namespace": _pid_namespace()}


def process_gone(record: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a heartbeat is known to have ended: it ran where this one runs (same
    host and PID namespace) and its pid is gone. Elsewhere only the heartbeat's age can tell."""
    here = this_process()
    if (record.get("host"), record.get("pid_namespace")) != (here["host"], here["pid_namespace"]):
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        return False
    return False


# Prediction folders.


def gallery_dir(folder: str | Path) -> Path:
    """Where ``carvana gallery`` draws a prediction folder's worst images: ``<run>/oof_worst/`` for a run's
    ``oof/``, else ``<folder>_worst/`` (``.`` is named by its absolute path)."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / (OOF_WORST if folder.name == OOF else f"{folder.name}{WORST_SUFFIX}")


def contact_sheet(gallery: str | Path) -> Path:
    """The contact sheet beside a gallery folder: ``<gallery>.png`` (``<run>/oof_worst.png``)."""
    gallery = Path(gallery)
    return gallery.parent / f"{gallery.name}.png"


def map_path(folder: str | Path, image_id: str) -> Path:
    """Where a prediction folder keeps the map of ``image_id``."""
    return Path(folder) / f"{image_id}{MAP_SUFFIX}"


def map_ids(folder: str | Path) -> list[str]:
    """The image ids of the maps in a prediction folder, sorted."""
    return sorted(entry.name[: -len(MAP_SUFFIX)] for entry in os.scandir(folder) if _is_map(entry.name))


def _is_map(name: str) -> bool:
    return name.endswith(MAP_SUFFIX) and not name.startswith(".")


def input_map_ids(folder: str | Path) -> list[str]:
    """The map ids of a prediction folder a stage reads: it must exist and hold at least one map."""
    check_folder(folder, "prediction folder")
    ids = map_ids(folder)
    if not ids:
        raise CarvanaError(f"no <id>{MAP_SUFFIX} in {folder}")
    return ids


def finished_manifest(folder: str | Path, ids: Sequence[str]) -> dict[str, Any] | None:
    """The manifest of a prediction folder a stage reads (None without one, e.g. made by hand), checked
    against the folder's map ``ids``: fewer maps than it counts means some were lost, and the stage would
    silently score, label or submit fewer images."""
    manifest = read_manifest(folder)
    count = None if manifest is None else manifest.get("images")
    if isinstance(count, int) and len(ids) < count:
        raise CarvanaError(
            f"{Path(folder) / MANIFEST} counts {count} maps but {folder} holds {len(ids)}: some were "
            "deleted; rerun the stage that made it"
        )
    return manifest


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD = len(_PNG_SIGNATURE) + 16  # the signature, then IHDR's length, type, width and height
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk: length 0, type, CRC
_TRUNCATED = "truncated PNG (it ends before its IEND chunk)"


def _unreadable(path: str | Path, error: OSError) -> CarvanaError:
    return CarvanaError(f"{path}: cannot read prediction ({error.strerror or error})")


def _bad_png(path: str | Path, what: str) -> CarvanaError:
    return CarvanaError(f"{path}: {what}; delete it and rerun the stage that wrote it")


def map_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a map from its PNG header, once its first and last bytes show a whole PNG: two small reads,
    so that a stage can vet every map it will read before it writes anything."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PNG_HEAD)
            f.seek(max(os.fstat(f.fileno()).st_size - len(_PNG_IEND), len(head)))
            tail = f.read()
    except OSError as error:
        raise _unreadable(path, error) from None
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise _bad_png(path, "not a PNG" if head else "an empty file")
    if tail != _PNG_IEND:
        raise _bad_png(path, _TRUNCATED)
    width, height = struct.unpack_from(">II", head, 16)
    return height, width


def _is_grey(path: Path) -> bool:
    """Whether a file is an 8-bit greyscale PNG, as maps are: its IHDR's bit depth and colour type."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PNG_HEAD + 2)
    except OSError:
        return False
    return head.startswith(_PNG_SIGNATURE) and head[_PNG_HEAD:] == b"\x08\x00"


def prediction_folders(root: str | Path) -> list[Path]:
    """Every prediction folder under ``root`` (``root`` itself included): one with a manifest or a heartbeat,
    or whose maps are 8-bit greyscale PNGs (colour PNGs, such as a gallery's overlays, are not maps)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        maps = [name for name in files if _is_map(name)]
        if MANIFEST in files or HEARTBEAT in files or (maps and _is_grey(Path(folder) / maps[0])):
            found.append(Path(folder))
            subdirs.clear()
        else:
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
    return sorted(found)


def _check_chunks(path: str | Path, png: memoryview) -> None:
    """Every chunk present and its CRC right, up to IEND (~0.1 ms for a full-size map): OpenCV's libpng
    prints its own lines on stderr for a truncated or damaged file, and the one error line must be all."""
    if png[: len(_PNG_SIGNATURE)] != _PNG_SIGNATURE:
        raise _bad_png(path, "not a PNG" if png else "an empty file")
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        end = pos + 12 + length
        if end > len(png):
            break
        if zlib.crc32(png[pos + 4 : end - 4]) != struct.unpack_from(">I", png, end - 4)[0]:
            raise _bad_png(path, f"damaged PNG (bad CRC in its {kind.decode('latin-1')} chunk)")
        if kind == b"IEND":
            return
        pos = end
    raise _bad_png(path, _TRUNCATED)


def read_map(path: str | Path) -> np.ndarray:
    """A probability map as uint8 (H, W) (v means v/255), or one error line naming the file."""
    try:
        png = memoryview(Path(path).read_bytes())
    except OSError as error:
        raise _unreadable(path, error) from None
    _check_chunks(path, png)
    prob = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if prob is None:
        raise _bad_png(path, "cannot be decoded as an image")
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
