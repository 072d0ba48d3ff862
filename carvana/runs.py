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
      <image_id>.zst                       8-bit probability (v/255) at the original resolution, zstd
                                           (or <image_id>.png: the manifest's format says which)
      manifest.json                        what made the maps, their format; written last: "complete"
      heartbeat.json                       predict.py's pulse: the image count and checkpoints too
      submission.csv                       predict.py's submission

    selection.yaml                         carvana select: ensemble weights of experiments, threshold
                                           and post-processing chosen on their pooled OOF maps

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
import threading
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import cv2
import numpy as np
import zstandard

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
# Map formats and their suffixes: .zst (zstd-compressed raw bytes) is read and written about 20x faster
# than PNG at a smaller size (bench/results.md); PNG is for looking at (carvana export-png), or made by hand.
MAP_FORMATS = {"zst": ".zst", "png": ".png"}
MAP_FORMAT = "zst"  # what stages write unless told otherwise
SUBMISSION = "submission.csv"
CV_REPORT = "cv_report"  # .md, .csv and .png beside the experiments
LEADERBOARD = "lb.json"  # an experiment's Kaggle scores, recorded by carvana lb
HEARTBEAT = "heartbeat.json"  # a training or prediction process's pulse (carvana.train.callbacks.Heartbeat)
OOF_WORST = "oof_worst"  # carvana gallery of <run>/oof: overlays in <run>/oof_worst/, <run>/oof_worst.png
WORST_SUFFIX = "_worst"  # carvana gallery of any other prediction folder: <folder>_worst/, <folder>_worst.png
WORST_LIST = "worst.csv"  # the gallery's images, worst first, in its folder
SELECTION = "selection.yaml"  # carvana select's output, read by carvana ensemble / submission --selection
POSTPROCESS_STEPS = {"largest_component": bool, "min_size": int, "fill_holes": bool}
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


def write_selection(path: str | Path, record: Mapping[str, Any]) -> Path:
    """A selection file (YAML, plain data), written whole; ``read_selection`` checks what it reads."""
    import yaml  # PyYAML comes with omegaconf; only this file format needs it here

    return atomic_write_text(path, "# carvana select\n" + yaml.safe_dump(dict(record), sort_keys=False))


def read_selection(path: str | Path) -> Record:
    """A selection file: ``experiments`` (folders), ``weights`` (one each, >= 0, normalised), ``threshold``
    in [0, 1) and ``postprocess`` (``POSTPROCESS_STEPS``). Plain data only (``yaml.safe_load``: teams share
    these files); anything else is one error naming the file and the entry."""
    import yaml

    try:
        record = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CarvanaError(f"{path}: unreadable selection file ({error})") from None
    if not isinstance(record, dict):
        raise CarvanaError(f"{path}: not a selection file (no mapping at its top)")
    record = Record(Path(path), record)
    experiments, weights, threshold, steps = (
        record[key] for key in ("experiments", "weights", "threshold", "postprocess")
    )
    if not isinstance(experiments, list) or not all(isinstance(e, str) for e in experiments or [0]):
        raise CarvanaError(f"{path}: experiments must be a list of folders")
    numbers = isinstance(weights, list) and all(isinstance(w, int | float) for w in weights)
    if not numbers or len(weights) != len(experiments) or min(weights) < 0 or sum(weights) <= 0:
        raise CarvanaError(f"{path}: weights must be one number >= 0 per experiment, not all 0")
    if not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        raise CarvanaError(f"{path}: threshold must be a number in [0, 1), got {threshold!r}")
    if not isinstance(steps, dict) or {key: type(value) for key, value in steps.items()} != POSTPROCESS_STEPS:
        raise CarvanaError(f"{path}: postprocess must give exactly {', '.join(POSTPROCESS_STEPS)}")
    return record


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


def map_suffix(fmt: str) -> str:
    """The file suffix of a map format (one of ``MAP_FORMATS``); an unknown format is one error."""
    if fmt not in MAP_FORMATS:
        raise CarvanaError(f"unknown map format {fmt!r}: use one of {', '.join(MAP_FORMATS)}")
    return MAP_FORMATS[fmt]


def map_path(folder: str | Path, image_id: str, fmt: str = MAP_FORMAT) -> Path:
    """Where a prediction folder keeps the map of ``image_id`` in format ``fmt`` (to write it; readers
    find the file a folder holds with ``map_files``)."""
    return Path(folder) / f"{image_id}{map_suffix(fmt)}"


def _map_id(name: str) -> tuple[str, str] | None:
    """(image id, format) of a map file's name, None for anything else (hidden files are temp files)."""
    if name.startswith("."):
        return None
    for fmt, suffix in MAP_FORMATS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], fmt
    return None


def folder_format(folder: str | Path) -> str | None:
    """The map format a prediction folder's manifest names (one written before formats were recorded
    holds PNGs), None without a manifest."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    fmt = manifest.get("format", "png")
    map_suffix(fmt)
    return fmt


def map_files(folder: str | Path) -> dict[str, Path]:
    """id -> map file of a prediction folder, sorted by id: the files of the format its manifest names
    (others, such as PNGs exported beside them, are not its maps), or of either format without a
    manifest, where an id with a file of each is one error (which is the map?)."""
    fmt = folder_format(folder)
    found: dict[str, Path] = {}
    for entry in os.scandir(folder):
        parsed = _map_id(entry.name)
        if parsed is None or fmt not in (None, parsed[1]):
            continue
        image_id = parsed[0]
        if image_id in found:
            raise CarvanaError(
                f"{folder} holds {found[image_id].name} and {entry.name}, and no {MANIFEST} says which "
                "format its maps are: delete one"
            )
        found[image_id] = Path(folder) / entry.name
    return dict(sorted(found.items()))


def map_ids(folder: str | Path) -> list[str]:
    """The image ids of the maps in a prediction folder, sorted."""
    return list(map_files(folder))


def input_maps(folder: str | Path) -> dict[str, Path]:
    """The maps of a prediction folder a stage reads (``map_files``): it must exist and hold one."""
    check_folder(folder, "prediction folder")
    files = map_files(folder)
    if not files:
        raise CarvanaError(f"no map (<id>{' or <id>'.join(MAP_FORMATS.values())}) in {folder}")
    return files


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

# A .zst map: a zstd skippable frame holding b"CVM1", height, width and the length of the zstd frame that
# follows it (every number little-endian uint32), then that frame: the H*W bytes row-major, with its content
# size and checksum. ``zstd -d`` skips the first frame, so the file decompresses to the raw bytes anywhere.
_ZST_HEAD = struct.Struct("<II4sIII")
_ZST_SKIPPABLE = 0x184D2A50
_ZST_TAG = b"CVM1"
_ZST_FRAME = b"\x28\xb5\x2f\xfd"  # the magic number of a zstd frame
_ZST_LEVEL = 3  # zstd's default: within 10% of level 1's speed at this size, smaller (bench/results.md)
_zstd = threading.local()  # one (de)compression context per thread: a context is not thread-safe


def _unreadable(path: str | Path, error: OSError) -> CarvanaError:
    return CarvanaError(f"{path}: cannot read prediction ({error.strerror or error})")


def _bad_map(path: str | Path, what: str) -> CarvanaError:
    return CarvanaError(f"{path}: {what}; delete it and rerun the stage that wrote it")


def _zst_size(path: str | Path, head: bytes, size: int) -> tuple[int, int]:
    """(H, W) from a .zst map's header, once the file's length shows its whole frame is there."""
    if len(head) < _ZST_HEAD.size + len(_ZST_FRAME):
        raise _bad_map(path, "an empty file" if not head else "truncated map (it ends inside its header)")
    magic, length, tag, height, width, frame = _ZST_HEAD.unpack_from(head)
    if (magic, length, tag) != (_ZST_SKIPPABLE, _ZST_HEAD.size - 8, _ZST_TAG):
        raise _bad_map(path, "not a .zst map (no carvana header)")
    if head[_ZST_HEAD.size : _ZST_HEAD.size + len(_ZST_FRAME)] != _ZST_FRAME:
        raise _bad_map(path, "not a .zst map (no zstd frame after its header)")
    if size != _ZST_HEAD.size + frame:
        raise _bad_map(path, f"truncated map ({size} bytes, its header says {_ZST_HEAD.size + frame})")
    return height, width


def map_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a map from its header, once its length (.zst) or its first and last bytes (PNG) show a
    whole file: small reads, so that a stage can vet every map it will read before it writes anything."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if str(path).endswith(MAP_FORMATS["zst"]):
                return _zst_size(path, f.read(_ZST_HEAD.size + len(_ZST_FRAME)), size)
            head = f.read(_PNG_HEAD)
            f.seek(max(size - len(_PNG_IEND), len(head)))
            tail = f.read()
    except OSError as error:
        raise _unreadable(path, error) from None
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise _bad_map(path, "not a PNG" if head else "an empty file")
    if tail != _PNG_IEND:
        raise _bad_map(path, _TRUNCATED)
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
    or holding .zst maps or 8-bit greyscale PNGs (colour PNGs, such as a gallery's overlays, are not maps)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        maps = [name for name in files if _map_id(name)]
        zst = any(name.endswith(MAP_FORMATS["zst"]) for name in maps)
        if MANIFEST in files or HEARTBEAT in files or zst or (maps and _is_grey(Path(folder) / maps[0])):
            found.append(Path(folder))
            subdirs.clear()
        else:
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
    return sorted(found)


def _check_chunks(path: str | Path, png: memoryview) -> None:
    """Every chunk present and its CRC right, up to IEND (~0.1 ms for a full-size map): OpenCV's libpng
    prints its own lines on stderr for a truncated or damaged file, and the one error line must be all."""
    if png[: len(_PNG_SIGNATURE)] != _PNG_SIGNATURE:
        raise _bad_map(path, "not a PNG" if png else "an empty file")
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        end = pos + 12 + length
        if end > len(png):
            break
        if zlib.crc32(png[pos + 4 : end - 4]) != struct.unpack_from(">I", png, end - 4)[0]:
            raise _bad_map(path, f"damaged PNG (bad CRC in its {kind.decode('latin-1')} chunk)")
        if kind == b"IEND":
            return
        pos = end
    raise _bad_map(path, _TRUNCATED)


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_zstd, "decompressor"):
        _zstd.decompressor = zstandard.ZstdDecompressor()
    return _zstd.decompressor


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_zstd, "compressor"):
        _zstd.compressor = zstandard.ZstdCompressor(level=_ZST_LEVEL, write_checksum=True)
    return _zstd.compressor


def _read_zst(path: str | Path, data: memoryview, out: np.ndarray | None) -> np.ndarray:
    """A .zst map decompressed straight into ``out`` where it fits, else a new (writable) array; its
    checksum checked."""
    height, width = _zst_size(path, bytes(data[: _ZST_HEAD.size + len(_ZST_FRAME)]), len(data))
    prob = out
    if prob is None or prob.shape != (height, width) or prob.dtype != np.uint8 or not prob.flags.c_contiguous:
        prob = np.empty((height, width), np.uint8)
    try:
        with _decompressor().stream_reader(data[_ZST_HEAD.size :]) as reader:
            filled = reader.readinto(prob)
            extra = reader.read(1)  # reaches the frame's end, where its checksum is verified
    except zstandard.ZstdError as error:
        raise _bad_map(path, f"damaged map ({error})") from None
    if filled != prob.size or extra:
        raise _bad_map(path, f"damaged map (its frame holds other than the {width}x{height} its header says)")
    return prob


def read_map(path: str | Path, out: np.ndarray | None = None) -> np.ndarray:
    """A probability map as uint8 (H, W) (v means v/255), from a .zst or a PNG file, or one error line
    naming the file. A .zst map is decompressed into ``out`` when it is a contiguous uint8 array of the
    map's size (a PNG always into a new one): a fresh 2.5 MB array costs about as much in page faults as
    decompressing into it, so the ensemble keeps its buffers from image to image."""
    try:
        data = memoryview(Path(path).read_bytes())
    except OSError as error:
        raise _unreadable(path, error) from None
    if str(path).endswith(MAP_FORMATS["zst"]):
        return _read_zst(path, data, out)
    _check_chunks(path, data)
    prob = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if prob is None:
        raise _bad_map(path, "cannot be decoded as an image")
    return prob


def encode_map(prob: np.ndarray, fmt: str = MAP_FORMAT) -> bytes:
    """A uint8 (H, W) map as the bytes of a ``fmt`` file.

    PNG: OpenCV's default settings (level 1, Z_RLE strategy) beat IMWRITE_PNG_COMPRESSION=1, which also
    switches to the default strategy: 8 ms and 160 kB against 20 ms and 200 kB (decoding costs 5 ms more).
    """
    if map_suffix(fmt) == MAP_FORMATS["zst"]:
        if prob.dtype != np.uint8 or prob.ndim != 2:
            raise CarvanaError(f"a map is uint8 (H, W), got {prob.dtype} {prob.shape}")
        frame = _compressor().compress(np.ascontiguousarray(prob).data)
        return _ZST_HEAD.pack(_ZST_SKIPPABLE, _ZST_HEAD.size - 8, _ZST_TAG, *prob.shape, len(frame)) + frame
    ok, png = cv2.imencode(MAP_FORMATS["png"], prob)
    if not ok:
        raise CarvanaError(f"PNG encoding of a {prob.dtype} {prob.shape} map failed")
    return png.tobytes()


def write_map(folder: str | Path, image_id: str, prob: np.ndarray, fmt: str = MAP_FORMAT) -> Path:
    """Write the map of ``image_id`` into a prediction folder in format ``fmt``, whole."""
    return atomic_write_bytes(map_path(folder, image_id, fmt), encode_map(prob, fmt))


def writing_format(folder: str | Path, wanted: str = MAP_FORMAT) -> str:
    """The format a stage writes ``folder``'s maps in: the one it is already in (its manifest's, else that
    of all its maps) when it continues a folder, so that every map of a folder is of one format; else
    ``wanted``."""
    map_suffix(wanted)
    folder = Path(folder)
    if not folder.is_dir():
        return wanted
    formats = {parsed[1] for entry in os.scandir(folder) if (parsed := _map_id(entry.name))}
    fmt = folder_format(folder) or (formats.pop() if len(formats) == 1 else wanted)
    if fmt != wanted:
        log.info("%s holds %s maps: it is continued in that format", folder, fmt)
    return fmt


def pending(
    items: Sequence[Item], folder: str | Path, since: float = 0.0, fmt: str = MAP_FORMAT
) -> list[Item]:
    """The items without a ``fmt`` map in ``folder`` modified at or after ``since`` (a POSIX time).

    ``since`` is the newest checkpoint's mtime: a map older than its model is stale and is predicted again.
    """
    done = written_ids(folder, fmt, since)
    return [item for item in items if item.image_id not in done]


def written_ids(folder: str | Path, fmt: str = MAP_FORMAT, since: float = 0.0) -> set[str]:
    """The ids with a ``fmt`` map in ``folder`` modified at or after ``since``; none if it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    done = set()
    for entry in os.scandir(folder):
        parsed = _map_id(entry.name)
        if parsed is not None and parsed[1] == fmt and (not since or entry.stat().st_mtime >= since):
            done.add(parsed[0])
    return done


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


def write_manifest(
    folder: str | Path, items: Sequence[HasImageId], manifest: Mapping[str, Any], fmt: str = MAP_FORMAT
) -> bool:
    """Write ``manifest`` (plus the image count and the map format) once every item has its ``fmt`` map;
    False when some are missing."""
    missing = pending(items, folder, fmt=fmt)
    if missing:
        log.warning(
            "%s: %d of %d images have no map yet; rerun to finish them", folder, len(missing), len(items)
        )
        return False
    write_json(Path(folder) / MANIFEST, {**manifest, "format": fmt, "images": len(items)})
    return True
