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
from carvana.workers import available_cpus

K = 10
TEST_IMAGES = 100_064


def probability_map(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One noisy 8-bit probability map of a {0,1} mask, as a network's prediction of it looks."""
    height, width = mask.shape
    soft = 24 * (cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0) - 0.5)
    coarse = rng.normal(0, 1.5, (height // 32 + 1, width // 32 + 1)).astype(np.float32)
    logit = soft + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return (255 / (1 + np.exp(-logit)) + 0.5).astype(np.uint8)


def probability_maps(masks: dict[str, np.ndarray], folders: dict[str, list[Path]], seed: int = 0) -> None:
    """One noisy map per mask and model; model k's map is written into the k-th folder of every format."""
    rng = np.random.default_rng(seed)
    for image_id, mask in masks.items():
        for k in range(K):
            prob = probability_map(mask, rng)
            for fmt, paths in folders.items():
                runs.write_map(paths[k], image_id, prob, fmt)


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
    """ms per image in one process: reading its K maps, reading and summing them, and the whole row."""
    paths = [[runs.map_path(folder, image_id) for folder in folders] for image_id in ids]
    stages: dict[str, Callable[[list[Path]], object]] = {
        "read": lambda group: [runs.read_map(path) for path in group],
        "read + sum": ensemble.total,
        "row": lambda group: rle.encode(ensemble.combined_mask(group, [1 / K] * K, False, 127)),
    }
    result = {}
    for name, stage in stages.items():
        start = time.perf_counter()
        for group in paths:
            stage(group)
        result[name] = 1e3 * (time.perf_counter() - start) / len(paths)
    return result


def summing(probs: list[list[np.ndarray]]) -> dict[str, Callable[[], float]]:
    """Images per second of summing each image's K in-memory maps three ways: OpenCV's float32
    ``accumulate`` (the project's ``sum_maps``), numpy's casting uint16 += uint8, and OpenCV's 8u + 8u ->
    16u add in pairs, then 16u adds."""

    def numpy_u16() -> None:
        for maps in probs:
            acc = np.zeros(maps[0].shape, np.uint16)
            for prob in maps:
                np.add(acc, prob, out=acc)

    def pairs() -> None:
        for maps in probs:
            acc = cv2.add(maps[0], maps[1], dtype=cv2.CV_16U)
            for first, second in zip(maps[2::2], maps[3::2], strict=True):
                np.add(acc, cv2.add(first, second, dtype=cv2.CV_16U), out=acc)

    return {
        "sum: float32 accumulate": lambda: rate(len(probs), lambda: [ensemble.sum_maps(m) for m in probs]),
        "sum: numpy uint16 += uint8": lambda: rate(len(probs), numpy_u16),
        "sum: 8u+8u->16u pairs": lambda: rate(len(probs), pairs),
    }


def run(settings: Settings) -> Case:
    count, size = (3, (160, 240)) if settings.smoke else (24, None)
    samples = real_samples(count)
    masks = {s.image_id: read_mask(s.mask) for s in samples if s.mask is not None}
    if size is not None:
        masks = {i: cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST) for i, m in masks.items()}
    folders = {fmt: [settings.scratch / f"{fmt}{k}" for k in range(K)] for fmt in ("zst", "png")}
    probability_maps(masks, folders)
    ids = list(masks)
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
    in_memory = [[runs.read_map(runs.map_path(f, i)) for f in folders["zst"]] for i in ids[:8]]
    sums = interleave(summing(in_memory), settings)
    case = Case("ensemble", f"Ensemble: mean of K={K} 8-bit maps per image, threshold, RLE, submission rows")
    head = compare("vs reading the maps", "images/s", figures, mine, bound, 0.8)
    png = compare("vs the same from PNG maps", "images/s", figures, mine, old, 2.5)
    pairs, *others = list(sums)
    case.comparisons += [head, png]
    case.comparisons += [compare(f"summing, vs {o[5:]}", "images/s", sums, pairs, o) for o in others]
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
        f"them {parts['read + sum']:.1f} ms, the whole row (threshold and RLE too) {parts['row']:.1f} ms: "
        "reading has become the cheap part, and the exact sum (float32, OpenCV's accumulate) is what "
        "keeps the row from the bound",
    ]
    bytes_per_map = {
        fmt: sum(runs.map_path(paths[0], i, fmt).stat().st_size for i in ids) / len(ids) / 1e3
        for fmt, paths in folders.items()
    }
    case.setup = {
        "images": f"{len(ids)} x {K} maps" + (f" at {size[0]}x{size[1]}" if size else " at 1918x1280"),
        "processes": workers,
        "map size": f"{bytes_per_map['zst']:.0f} kB .zst, {bytes_per_map['png']:.0f} kB PNG",
    }
    return case
