"""Case 6: one probability map written and read, the .zst store against PNG (and a raw zlib stream).

Project: ``carvana.runs.write_map`` / ``read_map`` in the .zst format (zstd level 3 with its checksum,
behind a 24-byte header), each file written whole. Baselines: the same calls in the PNG format the stages
wrote before (OpenCV, level 1, Z_RLE), and the standard library's zlib at level 1 on the raw bytes, the
store one could build without a dependency. Maps: 1918x1280 8-bit maps of real masks, blurred and noisy as
a network's predictions (``bench.ensemble.probability_map``); all in one process, files on local disk.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from bench.data import real_samples
from bench.ensemble import probability_map
from bench.harness import Case, Settings, compare, interleave, rate
from carvana import runs
from carvana.data.kaggle import read_mask
from carvana.files import atomic_write_bytes


def write_all(folder: Path, probs: dict[str, np.ndarray], fmt: str) -> list[Path]:
    return [runs.write_map(folder, image_id, prob, fmt) for image_id, prob in probs.items()]


def zlib_write(folder: Path, probs: dict[str, np.ndarray]) -> list[Path]:
    return [
        atomic_write_bytes(folder / f"{image_id}.zlib", zlib.compress(prob.tobytes(), 1))
        for image_id, prob in probs.items()
    ]


def zlib_read(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(path.read_bytes()), np.uint8).reshape(shape)


def run(settings: Settings) -> Case:
    count, size = (3, (160, 240)) if settings.smoke else (24, None)
    rng = np.random.default_rng(1)
    masks = {s.image_id: read_mask(s.mask) for s in real_samples(count) if s.mask is not None}
    if size is not None:
        masks = {i: cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST) for i, m in masks.items()}
    probs = {image_id: probability_map(mask, rng) for image_id, mask in masks.items()}
    shape = next(iter(probs.values())).shape
    folders = {name: settings.scratch / name for name in ("zst", "png", "zlib")}
    written = {fmt: write_all(folders[fmt], probs, fmt) for fmt in ("zst", "png")}
    written["zlib"] = zlib_write(folders["zlib"], probs)
    n = len(probs)
    figures = interleave(
        {
            "write .zst": lambda: rate(n, lambda: write_all(folders["zst"], probs, "zst")),
            "write PNG": lambda: rate(n, lambda: write_all(folders["png"], probs, "png")),
            "write zlib": lambda: rate(n, lambda: zlib_write(folders["zlib"], probs)),
            "read .zst": lambda: rate(n, lambda: [runs.read_map(p) for p in written["zst"]]),
            "read PNG": lambda: rate(n, lambda: [runs.read_map(p) for p in written["png"]]),
            "read zlib": lambda: rate(n, lambda: [zlib_read(p, shape) for p in written["zlib"]]),
        },
        settings,
    )
    case = Case("map_store", "Map store: one 8-bit probability map written and read, .zst against PNG")
    case.comparisons += [
        compare("read, vs PNG", "maps/s", figures, "read .zst", "read PNG", 3.0),
        compare("write, vs PNG", "maps/s", figures, "write .zst", "write PNG", 3.0),
        compare("read, vs raw zlib (standard library)", "maps/s", figures, "read .zst", "read zlib"),
        compare("write, vs raw zlib (standard library)", "maps/s", figures, "write .zst", "write zlib"),
    ]
    case.checks["lossless"] = all(
        np.array_equal(runs.read_map(path), probs[path.stem])
        for fmt in ("zst", "png")
        for path in written[fmt]
    )
    kb = {name: sum(p.stat().st_size for p in paths) / len(paths) / 1e3 for name, paths in written.items()}
    case.setup = {
        "maps": f"{n} at {shape[1]}x{shape[0]}",
        "bytes per map": f"{kb['zst']:.1f} kB .zst, {kb['png']:.1f} kB PNG, {kb['zlib']:.1f} kB zlib",
    }
    read, write = case.comparisons[:2]
    case.notes.append(
        f"per map: reading {1e3 / read.project:.2f} ms .zst against {1e3 / read.baseline:.2f} ms PNG; "
        f"writing {1e3 / write.project:.2f} ms against {1e3 / write.baseline:.2f} ms (a writer thread's "
        "cost per map beside the accelerator)"
    )
    return case
