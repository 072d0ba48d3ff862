"""Combining prediction folders into one: weighted mean of the probabilities, or a hard majority vote.

Every input map is vetted first (present in every folder, a whole PNG, the same size in each), so bad input
is refused before anything is written. Then it runs image by image in worker processes, each writing its
output map whole (temp name, then rename), so an interrupted run resumes where it stopped: images whose
output exists are skipped. ``manifest.json`` is written last, so its presence means the folder is complete.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carvana import runs
from carvana.errors import CarvanaError, check_shape, check_workers, normalised_weights, run_command
from carvana.progress import track
from carvana.workers import imap_unordered

log = logging.getLogger(__name__)

VOTE_CUTOFF = 128  # a map votes car where v/255 >= 0.5, i.e. v >= 128
_TIE = 1e-5  # float32 sums of normalised weights miss an exact 0.5 by ~1e-7; a tie counts as car

# (input folders, output folder, normalised weights, vote)
Settings = tuple[tuple[str, ...], str, tuple[float, ...], bool]


def _equal_weights_table(count: int, vote: bool) -> np.ndarray:
    """uint8 result for every possible integer sum of ``count`` equally weighted maps (or votes)."""
    sums = np.arange((1 if vote else 255) * count + 1)
    if vote:
        return np.where(2 * sums >= count, 255, 0).astype(np.uint8)  # a tie counts as car
    return ((2 * sums + count) // (2 * count)).astype(np.uint8)  # the mean, rounded half up


def combine(paths: Sequence[str], weights: Sequence[float], vote: bool = False) -> np.ndarray:
    """The uint8 map of one image from its maps at ``paths`` with normalised ``weights``: the weighted mean
    rounded half up, or with ``vote`` 255 where the weighted share of maps >= 128 is at least half, else 0.

    Equal weights (the common case) sum exactly in integers and take the result from a table: three times
    faster than float32, and exact on ties, which float32 sums of 1/K miss by ~1e-7 either way.
    """
    equal = len(set(weights)) == 1
    dtype = (np.uint16 if 255 * len(paths) <= 0xFFFF else np.uint32) if equal else np.float32
    acc: np.ndarray | None = None
    for path, weight in zip(paths, weights, strict=True):
        prob = runs.read_map(path)
        if acc is None:
            acc = np.zeros(prob.shape, dtype)
        else:
            check_shape(Path(path).stem, path, prob.shape, acc.shape, f"the size of {paths[0]}")
        if vote:
            prob = (prob >= VOTE_CUTOFF).view(np.uint8)
        if equal:
            np.add(acc, prob, out=acc)
        else:
            acc += prob * np.float32(weight)
    assert acc is not None, "combine needs at least one map"
    if equal:
        return _equal_weights_table(len(paths), vote)[acc]
    if vote:
        return (acc >= np.float32(0.5 - _TIE)).view(np.uint8) * np.uint8(255)
    return (acc + np.float32(0.5)).astype(np.uint8)  # round half up; acc <= 255 up to ~1e-4


def _combine(image_id: str, settings: Settings) -> str:
    """Combine one image's K maps and write the output map; returns the id."""
    inputs, out, weights, vote = settings
    runs.write_map(
        out, image_id, combine([str(runs.map_path(folder, image_id)) for folder in inputs], weights, vote)
    )
    return image_id


def _check_sizes(folders: Sequence[Path], ids: Sequence[str]) -> None:
    """Each image's maps must be whole PNGs of one size, read from their headers before anything is
    written."""
    for image_id in ids:
        paths = [runs.map_path(folder, image_id) for folder in folders]
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
) -> Path:
    """Combine the prediction folders ``inputs`` into ``out``; returns ``out``.

    Every folder must hold the same images (``subset`` keeps only the ids they share).
    Pixel = round(sum w_i p_i) with the weights normalised, or with ``vote`` 255 where the weighted share
    of maps with p >= 0.5 is at least half (a tie counts as car), else 0. ``workers=0`` uses every CPU.
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

    present = [runs.input_map_ids(folder) for folder in folders]
    every = sorted(set().union(*present))
    for folder, found in zip(folders, present, strict=True):
        missing = sorted(set(every).difference(found))
        if missing and not subset:
            raise CarvanaError(
                f"{len(missing)} of {len(every)} images are missing from {folder}, first: "
                f"{missing[0]}{runs.MAP_SUFFIX} (subset=True keeps the images all have)"
            )
    ids = sorted(set(every).intersection(*present))
    if not ids:
        raise CarvanaError(f"the folders {', '.join(map(str, folders))} share no image")
    # The inputs' own manifests keep the provenance whole: which checkpoints and TTA made each input.
    input_manifests = [
        runs.finished_manifest(folder, found) for folder, found in zip(folders, present, strict=True)
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
    done = set(runs.map_ids(out)) if out.is_dir() else set()
    todo = [image_id for image_id in ids if image_id not in done]
    _check_sizes(folders, todo)
    out.mkdir(parents=True, exist_ok=True)

    settings: Settings = (tuple(map(str, folders)), str(out), norm, vote)
    combine = functools.partial(_combine, settings=settings)
    for _ in track(imap_unordered(combine, todo, workers), len(todo), f"ensemble {out}"):
        pass
    manifest["input_manifests"] = input_manifests
    runs.write_json(out / runs.MANIFEST, manifest)
    log.info("%s: %d images written, %d already there", out, len(todo), len(ids) - len(todo))
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``OUT IN1 IN2 ... [--weights ...] [--vote]``; a CarvanaError is one ``error:`` line, exit 2."""
    parser = argparse.ArgumentParser(prog="carvana ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output prediction folder")
    parser.add_argument("inputs", type=Path, nargs="+", help="input prediction folders")
    parser.add_argument("--weights", type=float, nargs="+", help="one per input, >= 0 (default: equal)")
    parser.add_argument("--vote", action="store_true", help="hard majority vote instead of the mean")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    parser.add_argument("--subset", action="store_true", help="only the images every input has")
    args = parser.parse_args(argv)

    def action() -> str:
        out = average(args.inputs, args.out, args.weights, args.vote, args.workers, args.subset)
        return f"{out}: ensemble of {len(args.inputs)} folders written"

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
