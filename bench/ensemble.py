"""Case 5: averaging K=10 probability maps per image, thresholding and RLE-encoding, against reading the maps.

Project: ``carvana.submit.submission.write`` straight from the K prediction folders, and (for comparison)
the two-step way, ``carvana.submit.ensemble.average`` into a folder of averaged PNGs and ``submission.write``;
all with their default of one worker process per CPU. Bound: only decoding the K PNGs of every image,
with a pool of as many processes. The maps are 1918x1280 8-bit PNGs made from real masks: each map is the
sigmoid of a sharpened, blurred mask plus low-frequency noise, so most pixels are saturated, the car's
edge is soft, and every map differs a little from the others, as the folds of a real ensemble do.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from bench.data import real_samples
from bench.harness import Case, Settings, compare, interleave, rate
from bench.rle import kaggle_encode
from carvana.data.kaggle import read_mask
from carvana.submit import ensemble, submission
from carvana.workers import available_cpus

K = 10
TEST_IMAGES = 100_064


def probability_maps(masks: dict[str, np.ndarray], folders: list[Path], seed: int = 0) -> None:
    """Write one noisy probability PNG per mask into each folder."""
    rng = np.random.default_rng(seed)
    for folder in folders:
        folder.mkdir(parents=True)
    for image_id, mask in masks.items():
        height, width = mask.shape
        soft = 24 * (cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0) - 0.5)
        for folder in folders:
            coarse = rng.normal(0, 1.5, (height // 32 + 1, width // 32 + 1)).astype(np.float32)
            logit = soft + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
            prob = 255 / (1 + np.exp(-logit)) + 0.5
            cv2.imwrite(str(folder / f"{image_id}.png"), prob.astype(np.uint8))


def _read_maps(paths: list[str]) -> None:
    for path in paths:
        cv2.imread(path, cv2.IMREAD_GRAYSCALE)


def read_bound(folders: list[Path], ids: list[str], workers: int) -> float:
    """Images per second of decoding every image's K maps, ``workers`` processes, nothing else."""
    jobs = [[str(folder / f"{image_id}.png") for folder in folders] for image_id in ids]

    def read_all() -> None:
        with multiprocessing.Pool(workers) as pool:
            pool.map(_read_maps, jobs, chunksize=max(1, len(jobs) // (4 * workers)))

    return rate(len(ids), read_all)


def fused(folders: list[Path], sample: Path, out: Path) -> float:
    """Images per second of submission.write straight from the K folders."""
    return rate(len(submission.read_sample(sample)), lambda: submission.write(folders, sample, out))


def two_steps(folders: list[Path], sample: Path, out: Path) -> float:
    """Images per second of ensemble.average into a folder of PNGs, then submission.write of that folder."""

    def both() -> None:
        ensemble.average(folders, out.with_suffix(""))
        submission.write(out.with_suffix(""), sample, out)

    return rate(len(submission.read_sample(sample)), both)


def reference_rows(folders: list[Path], ids: list[str]) -> list[str]:
    """The submission rows computed directly: exact mean of the K maps, rounded half up, > 127."""
    rows = []
    for image_id in ids:
        total = sum(
            cv2.imread(str(f / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE).astype(np.int64) for f in folders
        )
        mean = (2 * total + len(folders)) // (2 * len(folders))
        rows.append(f"{image_id}.jpg,{kaggle_encode(mean > 127)}")
    return rows


def run(settings: Settings) -> Case:
    count, size = (3, (160, 240)) if settings.smoke else (24, None)
    samples = real_samples(count)
    masks = {s.image_id: read_mask(s.mask) for s in samples if s.mask is not None}
    if size is not None:
        masks = {i: cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST) for i, m in masks.items()}
    folders = [settings.scratch / f"model{k}" for k in range(K)]
    probability_maps(masks, folders)
    ids = list(masks)
    sample = settings.scratch / "sample_submission.csv"
    sample.write_text("img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in ids))
    workers = available_cpus()
    outputs: dict[str, Path] = {}  # each run writes a new submission; the last one of each is checked
    fresh = itertools.count()

    def writing(name: str, write: Callable[[list[Path], Path, Path], float]) -> float:
        outputs[name] = settings.scratch / f"{name}{next(fresh)}.csv"
        return write(folders, sample, outputs[name])

    fused_name, two_name, bound_name = (
        "submission.write(K folders)",
        "average + submission.write",
        "read K maps",
    )
    runs = interleave(
        {
            fused_name: lambda: writing("fused", fused),
            two_name: lambda: writing("two_steps", two_steps),
            bound_name: lambda: read_bound(folders, ids, workers),
        },
        settings,
    )
    case = Case("ensemble", f"Ensemble: mean of K={K} 8-bit maps per image, threshold, RLE, submission rows")
    head = compare("vs reading the maps", "images/s", runs, fused_name, bound_name, 0.8)
    steps = compare("via an averaged folder, vs reading the maps", "images/s", runs, two_name, bound_name)
    case.comparisons += [head, steps]
    reference = reference_rows(folders, ids)
    for name, path in outputs.items():
        case.checks[f"{name}_rows_equal_reference"] = path.read_text().splitlines()[1:] == reference
    hours = {
        name: TEST_IMAGES / figure / 3600
        for name, figure in (("project", head.project), ("two steps", steps.project), ("read", head.baseline))
    }
    case.notes += [
        f"the full test set ({TEST_IMAGES:,} images, K={K}) would take {hours['project']:.1f} h on this "
        f"machine at this rate ({hours['two steps']:.1f} h via an averaged folder; reading the maps alone: "
        f"{hours['read']:.1f} h)",
        f"per image and process: {1e3 * workers / head.project:.0f} ms, of which reading the {K} maps is "
        f"{1e3 * workers / head.baseline:.0f} ms; the averaged folder adds a PNG encode, write and decode",
    ]
    case.setup = {
        "images": f"{len(ids)} x {K} maps" + (f" at {size[0]}x{size[1]}" if size else " at 1918x1280"),
        "processes": workers,
        "map size": f"{sum(p.stat().st_size for p in folders[0].glob('*.png')) / len(ids) / 1e3:.0f} kB PNG",
    }
    return case
