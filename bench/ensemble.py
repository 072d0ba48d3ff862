"""Case 5: averaging K=10 probability maps per image, thresholding and RLE-encoding, against reading the maps.

Project: ``carvana.submit.submission.write`` straight from the K prediction folders of .zst maps, with its
default of one worker process per CPU: each image's maps read once, summed in place, thresholded and
encoded in one pass. Bound: only reading the K .zst maps of every image (``carvana.runs.read_map``), with a
pool of as many processes. Old path: the same ``submission.write`` from K folders of PNG maps, the format
every stage wrote before .zst. The maps are 1918x1280 8-bit maps made from real masks: each map is the
sigmoid of a sharpened, blurred mask plus low-frequency noise, so most pixels are saturated, the car's
edge is soft, and every map differs a little from the others, as the folds of a real ensemble do.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from bench.data import real_samples
from bench.harness import Case, Settings, compare, interleave, rate
from bench.rle import kaggle_encode
from carvana import runs
from carvana.data.kaggle import read_mask
from carvana.submit import ensemble, rle, submission
from carvana.workers import available_cpus, opencv_threads

K = 10
TEST_IMAGES = 100_064


def probability_map(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One noisy 8-bit probability map of a {0,1} mask, as a network's prediction of it looks."""
    height, width = mask.shape
    soft = 24 * (cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0) - 0.5)
    coarse = rng.normal(0, 1.5, (height // 32 + 1, width // 32 + 1)).astype(np.float32)
    logit = soft + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return (255 / (1 + np.exp(-logit)) + 0.5).astype(np.uint8)


def probability_maps(
    masks: dict[str, np.ndarray], folders: dict[str, list[Path]], copies: int, seed: int = 0
) -> list[str]:
    """One noisy map per mask and model, model k's written into the k-th folder of every format, each file
    copied under ``copies - 1`` more ids so that a timed run is long enough for the pools' start and the
    vetting of the folders to weigh what they do at 100,064 images; returns the ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for image_id, mask in masks.items():
        copy_ids = [image_id] + [f"{image_id}c{c}" for c in range(1, copies)]
        ids += copy_ids
        for k in range(K):
            prob = probability_map(mask, rng)
            for fmt, paths in folders.items():
                data = runs.write_map(paths[k], image_id, prob, fmt).read_bytes()
                for copy in copy_ids[1:]:
                    runs.map_path(paths[k], copy, fmt).write_bytes(data)
    return ids


def _read_maps(paths: list[Path]) -> None:
    for path in paths:
        runs.read_map(path)


def read_bound(folders: list[Path], ids: list[str], workers: int) -> float:
    """Images per second of reading every image's K maps, ``workers`` processes, nothing else."""
    jobs = [[runs.map_path(folder, image_id) for folder in folders] for image_id in ids]

    def read_all() -> None:
        with multiprocessing.Pool(workers) as pool:
            pool.map(_read_maps, jobs, chunksize=max(1, len(jobs) // (4 * workers)))

    return rate(len(ids), read_all)


def fused(folders: list[Path], sample: Path, out: Path) -> float:
    """Images per second of submission.write straight from the K folders."""
    return rate(len(submission.read_sample(sample)), lambda: submission.write(folders, sample, out))


def reference_rows(folders: list[Path], ids: list[str]) -> list[str]:
    """The submission rows computed directly: exact mean of the K maps, rounded half up, > 127."""
    rows = []
    for image_id in ids:
        total = sum(runs.read_map(runs.map_path(f, image_id)).astype(np.int64) for f in folders)
        mean = (2 * total + len(folders)) // (2 * len(folders))
        rows.append(f"{image_id}.jpg,{kaggle_encode(mean > 127)}")
    return rows


def breakdown(folders: list[Path], ids: list[str]) -> dict[str, float]:
    """ms per image in one process, OpenCV on one thread as in the pool's workers: reading its K maps,
    reading and summing them, and the whole row."""
    paths = [[runs.map_path(folder, image_id) for folder in folders] for image_id in ids]
    stages: dict[str, Callable[[list[Path]], object]] = {
        "read": lambda group: [runs.read_map(path) for path in group],
        "read + sum": ensemble.total,
        "row": lambda group: rle.encode(ensemble.combined_mask(group, [1 / K] * K, False, 127)),
    }
    result = {}
    with opencv_threads(1):
        for name, stage in stages.items():
            start = time.perf_counter()
            for group in paths:
                stage(group)
            result[name] = 1e3 * (time.perf_counter() - start) / len(paths)
    return result


def summing(paths: list[list[Path]]) -> dict[str, Callable[[], float]]:
    """Images per second of reading and summing each image's K maps in one process (OpenCV on one thread,
    as in the pool's workers): the project's
    ``ensemble.total`` (maps read into kept buffers, added in pairs with OpenCV's 8u + 8u -> 16u add, each
    pair into a kept uint16 sum), against new arrays summed with numpy's casting uint16 += uint8 or with
    OpenCV's 8u-into-32f ``accumulate``."""

    def numpy_u16() -> None:
        for group in paths:
            acc = np.zeros(runs.map_size(group[0]), np.uint16)
            for path in group:
                np.add(acc, runs.read_map(path), out=acc)

    def accumulate() -> None:
        for group in paths:
            acc = runs.read_map(group[0]).astype(np.float32)
            for path in group[1:]:
                cv2.accumulate(runs.read_map(path), acc)

    return {
        "read + sum: ensemble.total": lambda: rate(len(paths), lambda: [ensemble.total(g) for g in paths]),
        "read + sum: numpy uint16 += uint8": lambda: rate(len(paths), numpy_u16),
        "read + sum: float32 accumulate": lambda: rate(len(paths), accumulate),
    }


def run(settings: Settings) -> Case:
    count, copies, size = (3, 1, (160, 240)) if settings.smoke else (24, 20, None)
    samples = real_samples(count)
    masks = {s.image_id: read_mask(s.mask) for s in samples if s.mask is not None}
    if size is not None:
        masks = {i: cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST) for i, m in masks.items()}
    folders = {fmt: [settings.scratch / f"{fmt}{k}" for k in range(K)] for fmt in ("zst", "png")}
    ids = probability_maps(masks, folders, copies)
    sample = settings.scratch / "sample_submission.csv"
    sample.write_text("img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in ids))
    workers = available_cpus()
    outputs: dict[str, Path] = {}  # each run writes a new submission; the last one of each is checked
    fresh = itertools.count()

    def writing(name: str, fmt: str) -> float:
        outputs[name] = settings.scratch / f"{name}{next(fresh)}.csv"
        return fused(folders[fmt], sample, outputs[name])

    mine, old = "submission.write(K .zst folders)", "submission.write(K PNG folders)"
    bound = "read K .zst maps"
    figures = interleave(
        {
            mine: lambda: writing("zst", "zst"),
            old: lambda: writing("png", "png"),
            bound: lambda: read_bound(folders["zst"], ids, workers),
        },
        settings,
    )
    groups = [[runs.map_path(folder, image_id) for folder in folders["zst"]] for image_id in ids[:48]]
    with opencv_threads(1):  # as in the pool's workers (carvana.workers.pool), where the sums run
        sums = interleave(summing(groups), settings)
    case = Case("ensemble", f"Ensemble: mean of K={K} 8-bit maps per image, threshold, RLE, submission rows")
    head = compare("vs reading the maps", "images/s", figures, mine, bound, 0.8)
    png = compare("vs the same from PNG maps", "images/s", figures, mine, old, 2.5)
    project_sum, *others = list(sums)
    case.comparisons += [head, png]
    case.comparisons += [
        compare(f"reading and summing, vs {o[12:]}", "images/s", sums, project_sum, o) for o in others
    ]
    reference = reference_rows(folders["zst"], ids)
    for name, path in outputs.items():
        case.checks[f"{name}_rows_equal_reference"] = path.read_text().splitlines()[1:] == reference
    hours = {
        name: TEST_IMAGES / figure / 3600
        for name, figure in (("zst", head.project), ("png", png.baseline), ("read", head.baseline))
    }
    parts = breakdown(folders["zst"], ids)
    case.notes += [
        f"the full test set ({TEST_IMAGES:,} images, K={K}) would take {hours['zst']:.2f} h on this "
        f"machine at this rate, {hours['png']:.2f} h from PNG maps; reading the .zst maps alone: "
        f"{hours['read']:.2f} h",
        f"per image in one process: reading the {K} .zst maps {parts['read']:.1f} ms, reading and summing "
        f"them {parts['read + sum']:.1f} ms, the whole row (threshold and RLE too) {parts['row']:.1f} ms",
    ]
    bytes_per_map = {
        fmt: sum(runs.map_path(paths[0], i, fmt).stat().st_size for i in ids) / len(ids) / 1e3
        for fmt, paths in folders.items()
    }
    case.setup = {
        "images": f"{len(ids)} x {K} maps"
        + (f" at {size[0]}x{size[1]}" if size else " at 1918x1280")
        + f" ({len(masks)} real masks, each map copied under {copies} ids)",
        "processes": workers,
        "map size": f"{bytes_per_map['zst']:.0f} kB .zst, {bytes_per_map['png']:.0f} kB PNG",
    }
    return case
