"""Combining prediction folders into one: weighted mean of the probabilities, or a hard majority vote.

Every input map is vetted first (present in every folder, a whole file, the same size in each), so bad input
is refused before anything is written. Then it runs image by image in worker processes, each writing its
output map whole (temp name, then rename), so an interrupted run resumes where it stopped: images whose
output exists are skipped. ``manifest.json`` is written last, so its presence means the folder is complete.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from carvana import runs
from carvana.errors import CarvanaError, check_shape, check_workers, normalised_weights, run_command
from carvana.progress import track
from carvana.workers import imap_unordered

log = logging.getLogger(__name__)

VOTE_CUTOFF = 128  # a map votes car where v/255 >= 0.5, i.e. v >= 128
_TIE = 1e-5  # float32 sums of normalised weights miss an exact 0.5 by ~1e-7; a tie counts as car

# (output folder, its map format, normalised weights, vote)
Settings = tuple[str, str, tuple[float, ...], bool]


def _equal_weights_table(count: int, vote: bool) -> np.ndarray:
    """uint8 result for every possible integer sum of ``count`` equally weighted maps (or votes)."""
    sums = np.arange((1 if vote else 255) * count + 1)
    if vote:
        return np.where(2 * sums >= count, 255, 0).astype(np.uint8)  # a tie counts as car
    return ((2 * sums + count) // (2 * count)).astype(np.uint8)  # the mean, rounded half up


class _Buffers(threading.local):
    """This thread's arrays, kept from image to image: a fresh 2.5-5 MB array can cost more in page faults
    than the add that fills it (five new 8u + 8u -> 16u sums of 1918x1280 maps took 4.6 ms, one 0.13 ms)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        array = self.arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self.arrays[name] = np.empty(shape, dtype)
        return array

    def read(
        self, path: str | Path, name: str, shape: tuple[int, ...] | None, first: str | Path
    ) -> np.ndarray:
        """The map at ``path`` read into the buffer ``name``; it must be ``shape``, the size of ``first``."""
        prob = runs.read_map(path, self.arrays.get(name))
        self.arrays[name] = prob
        if shape is not None:
            check_shape(Path(path).stem, path, prob.shape, shape, f"the size of {first}")
        return prob


_buffers = _Buffers()


def _read_all(paths: Sequence[str | Path]) -> Iterator[np.ndarray]:
    """The maps at ``paths`` one by one, each the size of the first, in a new array each."""
    shape = None
    for path in paths:
        prob = runs.read_map(path)
        if shape is not None:
            check_shape(Path(path).stem, path, prob.shape, shape, f"the size of {paths[0]}")
        shape = prob.shape
        yield prob


def total(paths: Sequence[str | Path]) -> np.ndarray:
    """The exact sum of the maps at ``paths``, each read once: uint16 up to 257 maps (257 * 255 < 2**16),
    int32 beyond. The sum is this thread's buffer, overwritten by its next call: copy it to keep it.

    Maps are added in pairs, OpenCV's 8u + 8u -> 16u add, and each pair into the sum: faster than OpenCV's
    8u-into-32f ``accumulate`` and numpy's casting uint16 += uint8 (bench/results.md, ensemble).
    """
    assert paths, "a sum needs at least one map"
    first = paths[0]
    dtype, depth = (np.uint16, cv2.CV_16U) if len(paths) <= 257 else (np.int32, cv2.CV_32S)
    acc: np.ndarray | None = None
    pending = iter(paths)
    for path in pending:
        prob = _buffers.read(path, "a", None if acc is None else acc.shape, first)
        shape = prob.shape
        other = next(pending, None)
        summand = prob
        if other is not None:
            second = _buffers.read(other, "b", shape, first)
            target = _buffers.get("sum" if acc is None else "pair", shape, dtype)
            summand = cv2.add(prob, second, dst=target, dtype=depth)
        if acc is None:
            acc = _buffers.get("sum", shape, dtype)
            if summand is not acc:
                np.copyto(acc, summand)
        else:
            cv2.add(acc, summand, dst=acc, dtype=depth)
    assert acc is not None
    return acc


def _weighted(paths: Sequence[str | Path], weights: Sequence[float], vote: bool) -> np.ndarray:
    """The float32 weighted sum of the maps (or of their votes: 1 where v >= 128)."""
    acc: np.ndarray | None = None
    for prob, weight in zip(_read_all(paths), weights, strict=True):
        if acc is None:
            acc = np.zeros(prob.shape, np.float32)
        acc += (prob >= VOTE_CUTOFF if vote else prob) * np.float32(weight)
    assert acc is not None, "a sum needs at least one map"
    return acc


def combine(paths: Sequence[str | Path], weights: Sequence[float], vote: bool = False) -> np.ndarray:
    """The uint8 map of one image from its maps at ``paths`` with normalised ``weights``: the weighted mean
    rounded half up, or with ``vote`` 255 where the weighted share of maps >= 128 is at least half, else 0.

    Equal weights (the common case) sum exactly in integers and take the result from a table: faster than
    float32, and exact on ties, which float32 sums of 1/K miss by ~1e-7 either way.
    """
    if len(set(weights)) == 1:
        sums = _weighted(paths, [1.0] * len(paths), True) if vote else total(paths)
        return _equal_weights_table(len(paths), vote)[sums.astype(np.uint32)]
    acc = _weighted(paths, weights, vote)
    if vote:
        return (acc >= np.float32(0.5 - _TIE)).view(np.uint8) * np.uint8(255)
    return (acc + np.float32(0.5)).astype(np.uint8)  # round half up; acc <= 255 up to ~1e-4


def combined_mask(
    paths: Sequence[str | Path], weights: Sequence[float], vote: bool, cutoff: int
) -> np.ndarray:
    """``combine(paths, weights, vote) > cutoff``, without the mean map where the weights are equal: the
    rounded mean of K maps exceeds c exactly when their sum reaches ceil(K (2c + 1) / 2). The mask is this
    thread's buffer, overwritten by its next call (a submission encodes it at once)."""
    if len(paths) == 1 and not vote:  # one pass: the map itself is the mean
        prob = _buffers.read(paths[0], "a", None, paths[0])
        return np.greater(prob, np.uint8(cutoff), out=_buffers.get("mask", prob.shape, np.bool_))
    if len(set(weights)) == 1 and not vote:
        sums = total(paths)
        mask = _buffers.get("mask", sums.shape, np.bool_)
        return np.greater_equal(sums, (len(paths) * (2 * cutoff + 1) + 1) // 2, out=mask)
    return combine(paths, weights, vote) > np.uint8(cutoff)


def selection_weights(path: str | Path, count: int) -> tuple[float, ...]:
    """The weights a selection file (``carvana select``) gives ``count`` input folders: one test prediction
    folder per experiment of the file, in its order."""
    record = runs.read_selection(path)
    experiments = record["experiments"]
    if len(experiments) != count:
        names = ", ".join(Path(experiment).name for experiment in experiments)
        raise CarvanaError(
            f"{path} weighs {len(experiments)} experiments ({names}); give one prediction folder for each, "
            f"in that order, not {count}"
        )
    return normalised_weights(record["weights"], count)


def _combine(job: tuple[str, tuple[str, ...]], settings: Settings) -> str:
    """Combine one image's K maps and write the output map; returns the id."""
    out, fmt, weights, vote = settings
    image_id, paths = job
    runs.write_map(out, image_id, combine(paths, weights, vote), fmt)
    return image_id


def _check_sizes(jobs: Sequence[tuple[str, tuple[str, ...]]]) -> None:
    """Each image's maps must be whole files of one size, read from their headers before anything is
    written."""
    for image_id, paths in jobs:
        size = runs.map_size(paths[0])
        for path in paths[1:]:
            check_shape(image_id, path, runs.map_size(path), size, f"the size of {paths[0]}")


def average(
    inputs: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
    vote: bool = False,
    workers: int = 0,
    subset: bool = False,
    fmt: str = runs.MAP_FORMAT,
) -> Path:
    """Combine the prediction folders ``inputs`` into ``out``; returns ``out``.

    Every folder must hold the same images (``subset`` keeps only the ids they share).
    Pixel = round(sum w_i p_i) with the weights normalised, or with ``vote`` 255 where the weighted share
    of maps with p >= 0.5 is at least half (a tie counts as car), else 0. ``workers=0`` uses every CPU;
    ``fmt`` is the output's map format (an ``out`` already holding maps is continued in theirs).
    """
    folders = [Path(folder) for folder in inputs]
    out = Path(out)
    if not folders:
        raise CarvanaError("no input prediction folder")
    check_workers(workers)
    norm = normalised_weights(weights, len(folders))
    for folder in folders:
        if out.resolve() == folder.resolve():
            raise CarvanaError(f"output folder {out} is also an input")

    present = [runs.input_maps(folder) for folder in folders]
    every = sorted(set().union(*present))
    for folder, found in zip(folders, present, strict=True):
        missing = sorted(set(every).difference(found))
        if missing and not subset:
            raise CarvanaError(
                f"{len(missing)} of {len(every)} images are missing from {folder}, first: "
                f"{missing[0]} (subset=True keeps the images all have)"
            )
    ids = sorted(set(every).intersection(*present))
    if not ids:
        raise CarvanaError(f"the folders {', '.join(map(str, folders))} share no image")
    # The inputs' own manifests keep the provenance whole: which checkpoints and TTA made each input.
    input_manifests = [
        runs.finished_manifest(folder, list(found)) for folder, found in zip(folders, present, strict=True)
    ]

    manifest = {
        "stage": "ensemble",
        "inputs": [str(folder.resolve()) for folder in folders],
        "weights": list(norm),
        "vote": vote,
        "subset": subset,
        "images": len(ids),
    }
    runs.refuse_made_otherwise(out, manifest, ("inputs", "weights", "vote"))
    fmt = runs.writing_format(out, fmt)
    done = runs.written_ids(out, fmt)
    jobs = [(i, tuple(str(found[i]) for found in present)) for i in ids if i not in done]
    _check_sizes(jobs)
    out.mkdir(parents=True, exist_ok=True)

    combine = functools.partial(_combine, settings=(str(out), fmt, norm, vote))
    for _ in track(imap_unordered(combine, jobs, workers), len(jobs), f"ensemble {out}"):
        pass
    manifest["input_manifests"] = input_manifests
    runs.write_json(out / runs.MANIFEST, {**manifest, "format": fmt})
    log.info("%s: %d images written, %d already there", out, len(jobs), len(ids) - len(jobs))
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``OUT IN1 IN2 ... [--weights ...] [--vote]``; a CarvanaError is one ``error:`` line, exit 2."""
    parser = argparse.ArgumentParser(prog="carvana ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output prediction folder")
    parser.add_argument("inputs", type=Path, nargs="+", help="input prediction folders")
    parser.add_argument("--weights", type=float, nargs="+", help="one per input, >= 0 (default: equal)")
    parser.add_argument("--vote", action="store_true", help="hard majority vote instead of the mean")
    parser.add_argument("--selection", type=Path, help="the weights of a carvana select file (not --weights)")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    parser.add_argument("--subset", action="store_true", help="only the images every input has")
    parser.add_argument(
        "--format", choices=runs.MAP_FORMATS, default=runs.MAP_FORMAT, help="output map format"
    )
    args = parser.parse_args(argv)

    def action() -> str:
        weights = args.weights
        if args.selection is not None:
            if weights is not None or args.vote:
                raise CarvanaError("--selection gives the weights: drop --weights and --vote")
            weights = selection_weights(args.selection, len(args.inputs))
        out = average(args.inputs, args.out, weights, args.vote, args.workers, args.subset, args.format)
        return f"{out}: ensemble of {len(args.inputs)} folders written"

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
