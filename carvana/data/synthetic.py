"""The embedded default dataset: synthetic cars written in Kaggle's exact Carvana layout.

A fresh clone has no competition data (it is 25 GB and needs a Kaggle login), yet the main command should
run end to end.  This module renders a small, deterministic stand-in: each car is a simple 3-D model (body,
cabin with windows, wheels, lights, mirrors) photographed on a turntable from Carvana's 16 angles, over a
studio backdrop with a soft shadow, and written as ``train/``, ``train_masks/``, ``test/``, ``metadata.csv``
and ``sample_submission.csv`` exactly as Kaggle ships them, so every loader is exercised as on the real data.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana.data.kaggle import ANGLES
from carvana.errors import CarvanaError, run_command

__all__ = ["default_root", "ensure", "generate", "main"]

# ANGLES turntable stops: 01 front, 05 left side (front to the left, as Kaggle's), 09 back, 13 right
VERSION = 1  # bump when the rendering changes, so that ensure() regenerates cached copies
MARKER = "synthetic.json"
# Supersampling: edges in the JPEGs are anti-aliased, masks are thresholded at half coverage.  Images of
# Kaggle's full size are fine enough without it.
_SS_MAX_PIXELS = 1_000_000
_REF_LENGTH = 4.9  # metres that span 80% of the image width, as Carvana frames a mid-size sedan

# (make, model, body, trim2 choices): trim1 repeats the model, as in most of Kaggle's metadata.csv rows.
_MODELS = [
    ("Toyota", "Camry", "sedan", ("LE", "SE", "XLE")),
    ("Toyota", "Corolla", "sedan", ("L", "LE", "S")),
    ("Toyota", "RAV4", "suv", ("LE", "XLE", "Limited")),
    ("Honda", "Accord", "sedan", ("LX", "EX", "EX-L")),
    ("Honda", "Civic", "sedan", ("LX", "EX", "Si")),
    ("Honda", "CR-V", "suv", ("LX", "EX", "EX-L")),
    ("Ford", "Fusion", "sedan", ("S", "SE", "Titanium")),
    ("Ford", "Fiesta", "hatch", ("S", "SE", "Titanium")),
    ("Ford", "Escape", "suv", ("S", "SE", "Titanium")),
    ("Ford", "Explorer", "suv", ("Base", "XLT", "Limited")),
    ("Chevrolet", "Cruze", "sedan", ("LS Auto", "1LT Auto", "2LT")),
    ("Chevrolet", "Malibu", "sedan", ("LS", "LT", "LTZ")),
    ("Chevrolet", "Equinox", "suv", ("LS", "LT", "LTZ")),
    ("Nissan", "Altima", "sedan", ("2.5", "2.5 S", "2.5 SV")),
    ("Nissan", "Versa Note", "hatch", ("S", "SV", "SL")),
    ("Nissan", "Rogue", "suv", ("S", "SV", "SL")),
    ("Hyundai", "Elantra", "sedan", ("GLS", "SE", "Limited")),
    ("Hyundai", "Elantra GT", "hatch", ("Base", "Base W/ Preferred Pkg")),
    ("Hyundai", "Santa Fe Sport", "suv", ("Base", "2.0T")),
    ("Kia", "Optima", "sedan", ("LX", "EX", "SX")),
    ("Kia", "Soul", "hatch", ("Base", "+", "!")),
    ("Volkswagen", "Jetta", "sedan", ("S", "SE", "SEL")),
    ("Volkswagen", "Golf", "hatch", ("TSI S", "TSI SE")),
    ("Mazda", "MAZDA3", "hatch", ("i Sport", "i Touring", "s Grand Touring")),
    ("Mazda", "CX-5", "suv", ("Sport", "Touring", "Grand Touring")),
    ("Jeep", "Grand Cherokee", "suv", ("Laredo", "Limited", "Overland")),
    ("BMW", "3 Series", "sedan", ("328i", "328i xDrive", "328i xDrive w/Premium Pkg")),
    ("Lexus", "RX 350", "suv", ("Base", "F Sport")),
]
# Proportions in metres (hood and tail as fractions of the length; windscreen and rear window as their
# horizontal run; belt above the clearance), each drawn uniformly per car.
_BODIES = {
    "sedan": {
        "length": (4.45, 4.95), "width": (1.76, 1.86), "roof": (1.40, 1.48), "clearance": (0.13, 0.17),
        "belt": (0.64, 0.72), "hood": (0.24, 0.29), "tail": (0.17, 0.22), "windscreen": (0.6, 0.8),
        "rear_window": (0.45, 0.65), "wheel": (0.31, 0.34),
    },
    "hatch": {
        "length": (3.95, 4.35), "width": (1.68, 1.80), "roof": (1.45, 1.56), "clearance": (0.13, 0.17),
        "belt": (0.66, 0.74), "hood": (0.20, 0.25), "tail": (0.05, 0.07), "windscreen": (0.55, 0.75),
        "rear_window": (0.30, 0.45), "wheel": (0.30, 0.33),
    },
    "suv": {
        "length": (4.4, 4.95), "width": (1.82, 1.95), "roof": (1.62, 1.74), "clearance": (0.19, 0.24),
        "belt": (0.72, 0.80), "hood": (0.22, 0.26), "tail": (0.045, 0.06), "windscreen": (0.5, 0.65),
        "rear_window": (0.2, 0.32), "wheel": (0.35, 0.39),
    },
}  # fmt: skip
_YEARS = np.arange(2010, 2017)
_YEAR_WEIGHTS = np.array([1, 3, 9, 20, 22, 12, 4], dtype=float)

# Paint colours, roughly in the proportions of a used-car lot once shuffled; every car up to the 14th
# gets a different entry.
_PAINTS = np.array(
    [
        (236, 237, 239),  # white
        (24, 25, 28),  # black
        (168, 172, 177),  # silver
        (84, 87, 92),  # dark grey
        (165, 24, 30),  # red
        (26, 42, 92),  # dark blue
        (44, 96, 172),  # blue
        (36, 86, 56),  # green
        (196, 180, 146),  # beige
        (102, 22, 32),  # maroon
        (214, 104, 32),  # orange
        (222, 192, 44),  # yellow
        (128, 166, 204),  # light blue
        (96, 66, 46),  # brown
    ],
    dtype=np.float32,
)
_GLASS = np.array((28, 32, 38), np.float32)
_TIRE = np.array((30, 30, 32), np.float32)
_ARCH = np.array((16, 16, 18), np.float32)
_GRILLE = np.array((34, 35, 38), np.float32)
_HEADLIGHT = np.array((226, 228, 232), np.float32)
_TAILLIGHT = np.array((168, 22, 28), np.float32)
_PLATE = np.array((228, 228, 222), np.float32)

# Surface kinds: they pick the shading model.
_PAINT, _MATTE, _GLOSSY = 0, 1, 2


def generate(
    root: str | Path, cars: int = 20, test_cars: int = 3, width: int = 480, height: int = 320, seed: int = 0
) -> Path:
    """Write the dataset into root (which must not exist or be empty).

    ``cars`` training cars and ``test_cars`` test cars, 16 ``width`` x ``height`` views each; the same
    arguments always give byte-identical files.  ``synthetic.json`` (the arguments) is written last, so its
    presence marks a complete dataset.
    """
    params = _check(cars=cars, test_cars=test_cars, width=width, height=height, seed=seed)
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CarvanaError(f"{root}: exists and is not an empty folder; synthetic data needs a new one")
    for sub in ("train", "train_masks", "test"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    ids = _car_ids(seed, cars + test_cars)
    paint_order = np.random.default_rng([seed, 0x5EED]).permutation(len(_PAINTS))
    rows = []
    for index, car_id in enumerate(ids):
        rng = np.random.default_rng([seed, index])
        make, model, body, trims = _MODELS[rng.integers(len(_MODELS))]
        year = int(rng.choice(_YEARS, p=_YEAR_WEIGHTS / _YEAR_WEIGHTS.sum()))
        rows.append((car_id, str(year), make, model, model, str(trims[rng.integers(len(trims))])))
        car = _Car.random(rng, body, _PAINTS[paint_order[index % len(_PAINTS)]])
        studio = _Studio.random(rng, width, height)
        is_train = index < cars
        for angle in range(1, ANGLES + 1):
            image, mask = _render(car, studio, angle, rng)
            name = f"{car_id}_{angle:02d}"
            Image.fromarray(image).save(root / ("train" if is_train else "test") / f"{name}.jpg", quality=90)
            if is_train:
                _save_mask(mask, root / "train_masks" / f"{name}_mask.gif")

    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(["id", "year", "make", "model", "trim1", "trim2"])
        writer.writerows(sorted(rows))
    with open(root / "sample_submission.csv", "w", newline="") as f:
        f.write("img,rle_mask\n")
        for name in sorted(f"{car_id}_{a:02d}.jpg" for car_id in ids[cars:] for a in range(1, ANGLES + 1)):
            f.write(f"{name},1 1\n")
    (root / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    return root


def default_root(cache_dir: str | Path) -> Path:
    """Where the embedded dataset lives under the cache folder (``paths.cache_dir``)."""
    return Path(cache_dir) / "synthetic"


def ensure(
    root: str | Path, cars: int = 20, test_cars: int = 3, width: int = 480, height: int = 320, seed: int = 0
) -> Path:
    """Return root, generating it first if it is missing or was generated with other parameters.

    Generation goes to a sibling temporary folder that is renamed into place, so an interrupted run never
    leaves a half-written dataset behind and concurrent callers (DDP ranks, dataloader workers) are safe.
    A folder without ``synthetic.json`` is never deleted: it may be the user's data.
    """
    params = _check(cars=cars, test_cars=test_cars, width=width, height=height, seed=seed)
    root = Path(root)
    if _marker(root) == params:
        return root
    if root.exists() and not root.is_dir():
        raise CarvanaError(f"{root}: is a file; the synthetic dataset needs a folder there")
    if root.is_dir() and any(root.iterdir()) and _marker(root) is None:
        raise CarvanaError(
            f"{root}: exists without {MARKER}, so it was not generated here; remove it or pick another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        generate(tmp, **{k: params[k] for k in ("cars", "test_cars", "width", "height", "seed")})
        if root.is_dir() and _marker(root) != params:
            shutil.rmtree(root, ignore_errors=True)  # an older synthetic set, or an empty folder
        try:
            tmp.rename(root)
        except OSError:
            if _marker(root) != params:  # not another process that finished the same dataset first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: ``ROOT [--cars N ...]`` writes (or finds up to date) the synthetic dataset at ROOT."""
    parser = argparse.ArgumentParser(prog="carvana synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder to write (train/, train_masks/, test/, ...)")
    parser.add_argument("--cars", type=int, default=20, help="training cars, 16 angles each")
    parser.add_argument("--test-cars", type=int, default=3)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def action() -> str:
        root = ensure(args.root, args.cars, args.test_cars, args.width, args.height, args.seed)
        return f"{root}: {args.cars} training and {args.test_cars} test cars at {args.width}x{args.height}"

    return run_command(action)


def _check(**params: int) -> dict[str, int]:
    """The validated parameters, plus the generator version, as stored in synthetic.json."""
    minimum = {"cars": 1, "test_cars": 0, "width": 32, "height": 32, "seed": 0}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CarvanaError(f"data.synthetic.{key}={value!r}: must be an integer")
        if value < minimum[key]:
            raise CarvanaError(f"data.synthetic.{key}={value}: must be >= {minimum[key]}")
    for key in ("width", "height"):
        if params[key] > 8192:
            raise CarvanaError(f"data.synthetic.{key}={params[key]}: must be <= 8192")
    return {**{k: int(v) for k, v in params.items()}, "version": VERSION}


def _marker(root: Path) -> dict | None:
    """The parameters a synthetic dataset at root was generated with, or None."""
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _car_ids(seed: int, n: int) -> list[str]:
    """n distinct 12-hex-digit ids, like Kaggle's; the first k do not depend on n."""
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    while len(ids) < n:
        car_id = f"{int(rng.integers(0, 1 << 48)):012x}"
        if car_id not in ids:
            ids.append(car_id)
    return ids


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """A one-frame palette GIF with pixel values 0 and 1 (black, white), as Kaggle's train_masks."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.save(path, format="GIF")


# --------------------------------------------------------------------------------------------- the model


@dataclass
class _Face:
    """A planar polygon of the car; decals are faces lifted a few millimetres off their parent."""

    points: np.ndarray  # (n, 3) world coordinates, metres; x to the front, y to the left, z up
    normal: np.ndarray  # (3,) outward unit normal
    color: np.ndarray  # (3,) RGB
    kind: int


@dataclass
class _Car:
    """One car as flat-shaded polygons, with the few dimensions the renderer needs."""

    faces: list[_Face]
    length: float
    width: float
    belt: float  # height of the waistline, for the paint's vertical gradient
    clearance: float

    def __post_init__(self) -> None:
        # The faces packed into arrays, so that each view projects and lights them all in a few calls.
        self.points = np.concatenate([f.points for f in self.faces])
        self.starts = np.cumsum([0] + [len(f.points) for f in self.faces])
        self.normals = np.array([f.normal for f in self.faces])
        self.offsets = np.einsum("ij,ij->i", self.normals, np.array([f.points[0] for f in self.faces]))

    @classmethod
    def random(cls, rng: np.random.Generator, body: str, paint: np.ndarray) -> _Car:
        """A car of the given body style with jittered proportions and a jittered paint colour."""
        size = {key: rng.uniform(*bounds) for key, bounds in _BODIES[body].items()}
        length, width, roof, clear, wheel = (
            size[k] for k in ("length", "width", "roof", "clearance", "wheel")
        )
        belt = clear + size["belt"]
        color = np.clip(paint + rng.uniform(-8, 8, 3), 0, 255).astype(np.float32)
        half = length / 2
        shift = rng.uniform(-0.08, 0.08)  # cabin position along the car
        cab = {
            "rear": -half + max(size["tail"] * length, 0.2) + shift,
            "front": half - size["hood"] * length + shift,
        }
        cab["top_front"] = cab["front"] - size["windscreen"]
        cab["top_rear"] = cab["rear"] + size["rear_window"]
        overhangs = rng.uniform(0.82, 0.98) * length / 4.7, rng.uniform(0.90, 1.10) * length / 4.7
        axles = (half - overhangs[0], -half + overhangs[1])
        faces = _body(length, width, clear, belt, cab, color)
        faces += _cabin(width, belt, roof, cab, color, rng)
        faces += _mirrors(width, belt, cab["front"], color)
        rim = np.array((172, 175, 180) if rng.random() < 0.7 else (62, 62, 66), np.float32)  # alloy or dark
        for x in axles:
            for side in (1, -1):
                faces += _wheel(x, side, width, wheel, clear, rim)
        return cls(faces, length, width, belt, clear)


def _normal(points: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Newell's normal of a polygon, oriented away from a point inside the solid."""
    p, q = points, np.roll(points, -1, axis=0)
    n = np.array(
        [
            np.sum((p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2])),
            np.sum((p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0])),
            np.sum((p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1])),
        ]
    )
    n /= np.linalg.norm(n)
    return -n if np.dot(n, points.mean(axis=0) - inside) < 0 else n


def _face(points, inside, color, kind=_PAINT) -> _Face:
    points = np.asarray(points, dtype=np.float64)
    return _Face(points, _normal(points, np.asarray(inside, dtype=np.float64)), color, kind)


def _decal(face: _Face, points, color, kind=_GLOSSY, lift: float = 0.006) -> _Face:
    """A polygon on face (given in world coordinates), lifted along its normal so it wins the depth test."""
    points = np.asarray(points, dtype=np.float64) + face.normal * lift
    return _Face(points, face.normal, color, kind)


def _bilinear(quad: np.ndarray, s: float, t: float) -> np.ndarray:
    """The point at (s, t) of a quad given as (bottom-a, bottom-b, top-b, top-a)."""
    bottom = quad[0] + (quad[1] - quad[0]) * s
    top = quad[3] + (quad[2] - quad[3]) * s
    return bottom + (top - bottom) * t


def _body(length, width, clear, belt, cab, color) -> list[_Face]:
    """The lower body: a side profile lofted across the width, with rounded-off corners seen from above."""
    half = length / 2
    hood_z = belt - 0.07
    profile = np.array(  # counter-clockwise in (x, z), seen from the car's left
        [
            (-half + 0.16, clear),
            (half - 0.16, clear),
            (half, clear + 0.22),
            (half - 0.04, hood_z - 0.12),
            (half - 0.28, hood_z),
            (cab["front"], belt),
            (cab["rear"], belt),
            (min(-half + 0.12, cab["rear"] - 0.04), belt - 0.03),
            (-half, belt - 0.17),
            (-half + 0.03, clear + 0.2),
        ]
    )
    chamfer = 0.13
    outer = profile * np.array([(length - 2 * chamfer) / length, 1.0])
    outer[:, 1] = np.where(profile[:, 1] > clear + 0.3, profile[:, 1] - 0.03, profile[:, 1])
    sections = [
        (-width / 2, outer),
        (-width / 2 + chamfer, profile),
        (width / 2 - chamfer, profile),
        (width / 2, outer),
    ]
    inside = np.array([0.0, 0.0, (clear + belt) / 2])

    def lift(prof, y):
        return np.column_stack([prof[:, 0], np.full(len(prof), y), prof[:, 1]])

    faces = [_face(lift(outer, -width / 2), inside, color), _face(lift(outer, width / 2), inside, color)]
    n = len(profile)
    strips = {}
    for (y0, p0), (y1, p1) in itertools.pairwise(sections):
        for i in range(n):
            j = (i + 1) % n
            a, b = (p0[i, 0], y0, p0[i, 1]), (p0[j, 0], y0, p0[j, 1])
            c, d = (p1[j, 0], y1, p1[j, 1]), (p1[i, 0], y1, p1[i, 1])
            if p0 is p1:
                faces.append(_face([a, b, c, d], inside, color))
                strips[i] = faces[-1]
            else:
                faces += [_face([a, b, c], inside, color), _face([a, c, d], inside, color)]

    # Lights, grille and plate: rectangles on the flat middle strips of the nose (edge 2) and tail (edge 8).
    inner = width / 2 - chamfer

    def on_strip(edge, s0, s1, y0, y1, color, kind):
        a, b = profile[edge], profile[(edge + 1) % n]
        (xa, za), (xb, zb) = (a + (b - a) * s0), (a + (b - a) * s1)
        corners = [(xa, y0, za), (xb, y0, zb), (xb, y1, zb), (xa, y1, za)]
        return _decal(strips[edge], corners, color, kind)

    for y in (1, -1):
        faces.append(on_strip(2, 0.55, 0.95, y * (inner - 0.02), y * (inner - 0.42), _HEADLIGHT, _GLOSSY))
        faces.append(on_strip(8, 0.05, 0.4, y * (inner - 0.02), y * (inner - 0.36), _TAILLIGHT, _GLOSSY))
    faces.append(on_strip(2, 0.12, 0.6, -0.42, 0.42, _GRILLE, _MATTE))
    faces.append(on_strip(8, 0.45, 0.8, -0.17, 0.17, _PLATE, _MATTE))
    return faces


def _cabin(width, belt, roof, cab, color, rng) -> list[_Face]:
    """The greenhouse: a frustum on the belt line, with windscreen, rear window and two side windows."""
    wb, wt = width / 2 - 0.11, width / 2 - 0.25
    bottom = [(cab["rear"], wb), (cab["front"], wb), (cab["front"], -wb), (cab["rear"], -wb)]
    top = [(cab["top_rear"], wt), (cab["top_front"], wt), (cab["top_front"], -wt), (cab["top_rear"], -wt)]
    b = np.array([(x, y, belt) for x, y in bottom])
    t = np.array([(x, y, roof) for x, y in top])
    inside = np.array([(cab["rear"] + cab["front"]) / 2, 0.0, (belt + roof) / 2])
    roof_face = _face(t, inside, color)
    front = _face([b[1], b[2], t[2], t[1]], inside, color)
    back = _face([b[3], b[0], t[0], t[3]], inside, color)
    left = _face([b[0], b[1], t[1], t[0]], inside, color)
    right = _face([b[2], b[3], t[3], t[2]], inside, color)
    faces = [roof_face, front, back, left, right]
    for face in (front, back):
        quad = face.points
        glass = [_bilinear(quad, s, tt) for s, tt in ((0.05, 0.06), (0.95, 0.06), (0.94, 0.92), (0.06, 0.92))]
        faces.append(_decal(face, glass, _GLASS))
    pillar = rng.uniform(0.46, 0.54)  # the B-pillar, as a fraction from rear to front
    for face, flip in ((left, False), (right, True)):
        # Both sides as (rear, front, front-top, rear-top).
        quad = face.points[[1, 0, 3, 2]] if flip else face.points
        for s0, s1 in ((0.06, pillar - 0.03), (pillar + 0.03, 0.9)):
            corners = ((s0, 0.1), (s1, 0.1), (s1 + 0.05 if s1 > 0.8 else s1, 0.88), (s0 + 0.04, 0.88))
            faces.append(_decal(face, [_bilinear(quad, s, tt) for s, tt in corners], _GLASS))
    return faces


def _box(x0, x1, y0, y1, z0, z1, color) -> list[_Face]:
    """An axis-aligned box as six outward-facing quads."""
    c = np.array([(x, y, z) for z in (z0, z1) for y in (y0, y1) for x in (x0, x1)])
    inside = c.mean(axis=0)
    quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    return [_face(c[list(q)], inside, color) for q in quads]


def _mirrors(width, belt, x, color) -> list[_Face]:
    """Door mirrors just behind the windscreen's base: they stick out of the silhouette from the front."""
    faces = []
    for side in (1, -1):
        y0, y1 = sorted((side * (width / 2 - 0.14), side * (width / 2 + 0.1)))
        faces += _box(x - 0.22, x - 0.08, y0, y1, belt + 0.04, belt + 0.17, color)
    return faces


def _wheel(x, side, width, radius, clear, rim) -> list[_Face]:
    """A tyre (a 16-sided cylinder) with a rim and hub on its outer face, and the dark arch behind it."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    cx, cz = np.cos(angles), np.sin(angles)
    y_out, y_in = side * (width / 2 + 0.025), side * (width / 2 - 0.2)
    ring = np.column_stack([x + radius * cx, np.zeros(16), radius + radius * cz])
    outer, inner = ring + np.array([0, y_out, 0]), ring + np.array([0, y_in, 0])
    inside = np.array([x, (y_out + y_in) / 2, radius])
    faces = [_face(outer, inside, _TIRE, _MATTE), _face(inner, inside, _TIRE, _MATTE)]
    for i in range(16):
        j = (i + 1) % 16
        faces.append(_face([outer[i], outer[j], inner[j], inner[i]], inside, _TIRE, _MATTE))
    hub_center = np.array([x, y_out, radius])
    rim_face = _decal(faces[0], hub_center + (outer - hub_center) * [0.64, 1, 0.64], rim)
    hub = _decal(faces[0], hub_center + (outer - hub_center) * [0.2, 1, 0.2], rim * 0.55, lift=0.012)
    # The wheel well: a disc a little larger than the tyre on the body side, cut at the sill.
    arch = np.column_stack(
        [x + 1.13 * radius * cx, np.zeros(16), np.maximum(radius + 1.13 * radius * cz, clear + 0.01)]
    )
    arch_face = _Face(
        arch + np.array([0, side * (width / 2 + 0.004), 0]), np.array([0.0, side, 0.0]), _ARCH, _MATTE
    )
    return [arch_face, *faces, rim_face, hub]


# -------------------------------------------------------------------------------------------- rendering


@dataclass
class _Studio:
    """One car's photo session: the backdrop (wall, floor, turntable, sensor noise) and the camera."""

    width: int
    height: int
    elevation: float  # camera elevation, radians
    scale: float  # pixels per metre
    center: tuple[float, float]  # pixel where the turntable's centre projects
    backdrop: np.ndarray  # (h, w, 3) float32, without the car's shadow
    noise: np.ndarray  # (h, w, 3) float32

    @classmethod
    def random(cls, rng: np.random.Generator, width: int, height: int) -> _Studio:
        """A backdrop with jittered tones and horizon, seen from a jittered camera height."""
        w, h = width, height
        tint = rng.uniform(-6, 6, 3)
        wall_top = 236 + rng.uniform(-12, 8) + tint
        wall_bottom = wall_top - rng.uniform(10, 24)
        floor_far = 196 + rng.uniform(-22, 12) + tint + np.array((-4, 0, 6))  # the turntable's cool grey
        floor_near = floor_far - rng.uniform(20, 40)
        horizon = rng.uniform(0.40, 0.48)
        elevation = np.radians(rng.uniform(12.0, 16.0))
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(1.5, 3.0))
        scale = min(0.8 * w / _REF_LENGTH, 0.45 * h / 1.5)
        center = (w / 2, 0.64 * h)

        rows = np.arange(h, dtype=np.float32)[:, None] / h
        t_wall = np.clip(rows / horizon, 0, 1)
        t_floor = np.clip((rows - horizon) / (1 - horizon), 0, 1)
        wall = wall_top + (wall_bottom - wall_top) * t_wall
        floor = floor_far + (floor_near - floor_far) * t_floor
        blend = np.clip((rows - horizon) * h / 2.0 + 0.5, 0, 1)  # a two-pixel seam
        column = (wall * (1 - blend) + floor * blend).astype(np.float32)  # (h, 3)
        # The turntable: a disc of 3 m radius on the floor, a shade lighter than the floor around it.
        a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radius = 3.0 * scale
        disc = np.column_stack(
            [center[0] + radius * np.cos(a), center[1] + radius * np.sin(a) * np.sin(elevation)]
        )
        turntable = np.zeros((h, w), np.float32)
        cv2.fillPoly(turntable, [np.round(disc * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        turntable = _blur(turntable, 0.01 * w) * (blend > 0.5)
        backdrop = column[:, None, :] * (1 + 0.05 * turntable[..., None])
        return cls(w, h, float(elevation), scale, center, backdrop.astype(np.float32), noise)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur, done at a reduced resolution when sigma is large (it is only used for soft light)."""
    h, w = image.shape
    factor = max(1, int(sigma // 2))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), max(sigma, 0.5))
    small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _render(car: _Car, studio: _Studio, angle: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The RGB photo (uint8, h x w x 3) and the {0, 1} mask (uint8, h x w) of one turntable stop."""
    w, h = studio.width, studio.height
    theta = np.radians((angle - 1) * 360.0 / ANGLES + rng.uniform(-1.0, 1.0))
    e = studio.elevation
    # An orthographic camera orbiting the car: at theta=0 it faces the front, at 90 degrees the left side.
    view = np.array([np.cos(e) * np.cos(theta), np.cos(e) * np.sin(theta), np.sin(e)])  # towards the camera
    right = np.array([-np.sin(theta), np.cos(theta), 0.0])
    up = np.cross(view, right)
    light = -0.35 * right + 0.75 * up + 0.55 * view  # a studio softbox above and left of the camera
    light /= np.linalg.norm(light)
    halfway = (light + view) / np.linalg.norm(light + view)
    # The car is drawn supersampled into the window of the image that its bounding box covers.
    u = studio.center[0] + studio.scale * (car.points @ right)
    v = studio.center[1] - studio.scale * (car.points @ up)
    bx0, bx1 = max(int(u.min()) - 1, 0), min(int(np.ceil(u.max())) + 1, w)
    by0, by1 = max(int(v.min()) - 1, 0), min(int(np.ceil(v.max())) + 1, h)
    ss = 2 if w * h <= _SS_MAX_PIXELS else 1
    hs, ws = max(by1 - by0, 0) * ss, max(bx1 - bx0, 0) * ss
    scale = studio.scale * ss
    cx, cy = (studio.center[0] - bx0) * ss, (studio.center[1] - by0) * ss
    u, v = (u - bx0) * ss, (v - by0) * ss
    fixed = np.round(np.column_stack([u, v]) * 16).astype(np.int32)  # cv2's 4-bit sub-pixel coordinates
    first = car.starts[:-1]
    lo_x = np.floor(np.minimum.reduceat(u, first)).astype(int).clip(0, ws).tolist()
    hi_x = (np.ceil(np.maximum.reduceat(u, first)).astype(int) + 1).clip(0, ws).tolist()
    lo_y = np.floor(np.minimum.reduceat(v, first)).astype(int).clip(0, hs).tolist()
    hi_y = (np.ceil(np.maximum.reduceat(v, first)).astype(int) + 1).clip(0, hs).tolist()
    # Per face: facing (n . view), the plane's depth in pixel terms, and flat lighting.
    facing = car.normals @ view
    safe = np.where(facing > 1e-3, facing, 1.0)
    k = (car.offsets / safe).tolist()
    kx = ((car.normals @ right) / safe / scale).tolist()
    ky = ((car.normals @ up) / safe / scale).tolist()
    diffuse = np.maximum(car.normals @ light, 0.0)
    gloss = np.maximum(car.normals @ halfway, 0.0)
    sky = np.maximum(car.normals[:, 2], 0.0)
    paint_shade = (0.42 + 0.5 * diffuse + 0.14 * sky).tolist()
    paint_gloss = (70.0 * gloss**24).tolist()
    other_shade = 0.55 + 0.45 * diffuse
    visible = np.flatnonzero(facing > 1e-3).tolist()

    depth = np.full((hs, ws), -np.inf, np.float32)
    planes = np.zeros((3, hs, ws), np.float32)  # R, G, B planes: per-plane numpy calls are much faster
    # Pixel centres relative to the turntable's centre, in pixels along the camera's right and up axes.
    gx_all = np.arange(ws, dtype=np.float32) - np.float32(cx)
    gy_all = np.float32(cy) - np.arange(hs, dtype=np.float32)[:, None]
    vz, uz = np.float32(view[2]), np.float32(up[2] / scale)
    clearance, span = car.clearance, 1.0 / (car.belt - car.clearance)
    for i in visible:
        x0, x1, y0, y1 = lo_x[i], hi_x[i], lo_y[i], hi_y[i]
        if x1 <= x0 or y1 <= y0:
            continue
        face = car.faces[i]
        cover = np.zeros((y1 - y0, x1 - x0), np.uint8)
        polygon = fixed[car.starts[i] : car.starts[i + 1]]
        cv2.fillPoly(cover, [polygon], 1, shift=4, offset=(-16 * x0, -16 * y0))
        # Points of the face's plane are affine in pixel coordinates (orthographic camera): with
        # P = gx * right + gy * up + depth * view and n . P = n . p0, depth = k - gx * kx - gy * ky.
        gy = gy_all[y0:y1]
        d = (k[i] - kx[i] * gx_all[x0:x1]) - ky[i] * gy
        win = depth[y0:y1, x0:x1]
        hit = cover.view(bool)
        hit &= d > win
        np.copyto(win, d, where=hit)
        if face.kind == _PAINT:
            # Paint darkens towards the sill and brightens on the shoulders: a ramp in world height z.
            ramp = d * vz
            ramp += gy * uz
            ramp -= clearance
            ramp *= span
            np.clip(ramp, 0.0, 1.1, out=ramp)
            ramp *= 0.28 * paint_shade[i]
            ramp += 0.8 * paint_shade[i]
            for c in range(3):
                np.copyto(planes[c, y0:y1, x0:x1], ramp * face.color[c] + paint_gloss[i], where=hit)
        else:
            spec = (70.0 if face.kind == _GLOSSY else 8.0) * float(gloss[i]) ** 20
            glass = 22.0 * float(sky[i]) if face.kind == _GLOSSY else 0.0  # the ceiling mirrored in glass
            for c, value in enumerate((face.color * float(other_shade[i]) + (spec + glass)).tolist()):
                np.copyto(planes[c, y0:y1, x0:x1], value, where=hit)

    # The planes are zero where no face was drawn, so averaging them down premultiplies by coverage.
    image = studio.backdrop * (1 - 0.65 * _shadow(car, studio, right, up))[..., None]
    mask = np.zeros((h, w), np.uint8)
    if hs and ws:
        size = (bx1 - bx0, by1 - by0)
        alpha = cv2.resize(np.isfinite(depth).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        window = image[by0:by1, bx0:bx1]
        window *= (1.0 - alpha)[..., None]
        window += cv2.resize(cv2.merge(list(planes)), size, interpolation=cv2.INTER_AREA)
        mask[by0:by1, bx0:bx1] = alpha >= 0.5
    image = np.clip(image + studio.noise, 0, 255).astype(np.uint8)
    return image, mask


def _shadow(car: _Car, studio: _Studio, right: np.ndarray, up: np.ndarray) -> np.ndarray:
    """How much of the studio light the car keeps off the floor, 0..1: a wide penumbra and a darker core."""
    w, h = studio.width, studio.height
    cx, cy = studio.center
    shadow = np.zeros((h, w), np.float32)
    for grow, weight, sigma in ((0.25, 0.6, 0.25), (-0.1, 0.5, 0.07)):
        lx, ly = car.length / 2 + grow, car.width / 2 + grow
        corners = np.array([(lx, ly, 0), (lx, -ly, 0), (-lx, -ly, 0), (-lx, ly, 0)])
        pts = np.column_stack([cx + studio.scale * (corners @ right), cy - studio.scale * (corners @ up)])
        layer = np.zeros((h, w), np.float32)
        cv2.fillPoly(layer, [np.round(pts * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        shadow += weight * _blur(layer, studio.scale * sigma)
    return np.clip(shadow, 0, 1)


if __name__ == "__main__":
    sys.exit(main())
