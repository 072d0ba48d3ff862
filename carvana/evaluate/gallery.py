"""The worst images of a prediction folder, drawn: where a mean Dice of 0.997 hides the cars that fail.

    carvana gallery outputs/linknet34/fold0/oof data/carvana/train_masks -k 16

The K images with the lowest per-image Dice become overlays (the photo dimmed, its true outline white, false
positives red, false negatives cyan, the Dice and id in the corner), scaled to 640 pixels wide, in
``<run>/oof_worst/``, worst first; ``worst.csv`` there lists them with their car, angle, error pixels and the
car's make, model and year from ``metadata.csv``; ``<run>/oof_worst.png`` is their contact sheet. A folder
other than a run's ``oof/`` gets ``<folder>_worst/`` and ``<folder>_worst.png``.

The Dice of each image comes from the run's ``oof_score.json`` when it was scored at the same threshold
(the worst K are checked against their maps), else from the maps, in worker processes.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana import runs
from carvana.data.kaggle import (
    MASK_SUFFIX,
    MASKS_DIR,
    METADATA,
    TRAIN_DIR,
    image_path,
    mask_path,
    read_image,
    read_mask,
    read_metadata,
)
from carvana.errors import (
    CarvanaError,
    check_files,
    check_folder,
    check_fraction,
    check_shape,
    check_workers,
    run_command,
)
from carvana.files import atomic_write_bytes, write_csv
from carvana.metrics import dice
from carvana.progress import track
from carvana.workers import imap_unordered

OVERLAY_WIDTH = 640  # overlays are scaled down to this width, never up
TILE_WIDTH = 256  # a contact-sheet thumbnail
SHEET_COLUMNS = 4
SHEET_GAP = 4  # pixels between the tiles
SHEET_COLOURS = 64  # the sheet's palette: a README can embed 16 tiles in well under 500 kB
DIM = 0.5  # the photo's brightness under the errors
OUTLINE = (255, 255, 255)  # RGB: the true mask's outline
FALSE_POSITIVE = (255, 48, 48)  # predicted car where there is none
FALSE_NEGATIVE = (0, 200, 255)  # car the prediction missed
EXACT = (OUTLINE, FALSE_POSITIVE, FALSE_NEGATIVE)  # colours the sheet keeps as drawn
CAR_COLUMNS = ("make", "model", "year")  # of metadata.csv
COLUMNS = ("rank", "image_id", "car", "angle", "dice", "fp_pixels", "fn_pixels", *CAR_COLUMNS, "overlay")


@dataclass(frozen=True)
class Worst:
    """One image of the gallery: a row of ``worst.csv``."""

    rank: int
    image_id: str
    dice: float
    fp: int
    fn: int
    overlay: Path
    car: Mapping[str, str]  # its metadata.csv row; empty without one

    @property
    def car_id(self) -> str:
        """Kaggle's ``<car>_<angle>``: the car (the whole id of an image named otherwise)."""
        return self.image_id.rpartition("_")[0] or self.image_id

    @property
    def angle(self) -> str:
        """The turntable angle, ``01`` to ``16`` (empty for an image named otherwise)."""
        car, _, angle = self.image_id.rpartition("_")
        return angle if car else ""

    def row(self) -> list[str | int]:
        return [
            self.rank,
            self.image_id,
            self.car_id,
            self.angle,
            f"{self.dice:.6f}",
            self.fp,
            self.fn,
            *(self.car.get(column, "") for column in CAR_COLUMNS),
            self.overlay.name,
        ]


def _score(pair: tuple[str, str], cutoff: int) -> tuple[str, float]:
    """(image id, Dice) of one (prediction map, true mask GIF) pair."""
    path, gif = pair
    prob = runs.read_map(path)
    truth = read_mask(Path(gif))
    check_shape(Path(path).stem, path, prob.shape, truth.shape, f"the size of its mask {gif}")
    return Path(path).stem, dice(prob > np.uint8(cutoff), truth)


def stored_scores(folder: Path, ids: Sequence[str], threshold: float) -> tuple[Path, dict[str, float]] | None:
    """The Dice of every image of ``ids`` from the ``oof_score.json`` beside a run's ``oof/``, when it was
    scored at ``threshold`` and covers them all; None otherwise (then the maps are scored)."""
    folder = Path(os.path.abspath(folder))  # "." names no folder
    path = folder.parent / runs.OOF_SCORE
    if folder.name != runs.OOF or not path.is_file():
        return None
    record = runs.read_json(path)
    per_image = record.get("per_image")
    if (
        record.get("threshold") != threshold
        or not isinstance(per_image, dict)
        or not set(ids) <= set(per_image)
    ):
        return None
    try:
        return path, {image_id: float(per_image[image_id]) for image_id in ids}
    except (TypeError, ValueError) as error:
        raise CarvanaError(f"{path}: a per_image entry is not a Dice ({error})") from None


def _shrink(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The fraction of each output pixel a boolean mask covers, at ``size`` (W, H)."""
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def paint(image: np.ndarray, truth: np.ndarray, fp: np.ndarray, fn: np.ndarray, width: int) -> np.ndarray:
    """The photo dimmed with the true outline and the errors on it, at ``width`` (never enlarged). An
    output pixel shows an error if any pixel under it is one: a one-pixel sliver stays visible when shrunk."""
    height, full = truth.shape
    size = (min(full, width), max(1, round(height * min(full, width) / full)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size[0] < full else image.copy()
    out = (out * DIM).astype(np.uint8)
    outline, _ = cv2.findContours(
        (_shrink(truth, size) >= 0.5).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, outline, -1, OUTLINE, 1)
    out[_shrink(fp, size) > 0] = FALSE_POSITIVE
    out[_shrink(fn, size) > 0] = FALSE_NEGATIVE
    return out


def label(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``lines`` written in the top-left corner, white on black, sized to the image's width."""
    scale = max(0.45, 0.6 * image.shape[1] / OVERLAY_WIDTH)
    font, gap = cv2.FONT_HERSHEY_SIMPLEX, max(2, round(6 * scale))
    y = 0
    for text in lines:
        (w, h), base = cv2.getTextSize(text, font, scale, 1)
        cv2.rectangle(image, (0, y), (w + 2 * gap, y + h + base + gap), (0, 0, 0), cv2.FILLED)
        cv2.putText(image, text, (gap, y + h + gap // 2), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
        y += h + base + gap
    return image


def _png(rgb: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise CarvanaError(f"PNG encoding of a {rgb.shape} overlay failed")
    return png.tobytes()


@dataclass(frozen=True)
class _Draw:
    """The overlay and thumbnail of one image: picklable, for the worker processes."""

    masks_dir: Path
    images_dir: Path
    out_dir: Path
    cutoff: int
    digits: int

    def __call__(self, job: tuple[int, str, Path]) -> tuple[Worst, np.ndarray]:
        """The image of rank ``rank`` (its car's metadata left to the caller), and its thumbnail."""
        rank, image_id, path = job
        gif = mask_path(self.masks_dir, image_id)
        jpeg = image_path(self.images_dir, image_id)
        prob, truth, image = runs.read_map(path), read_mask(gif) != 0, read_image(jpeg)
        for source, array in ((path, prob), (jpeg, image)):
            check_shape(image_id, source, array.shape, truth.shape, f"the size of its mask {gif}")
        pred = prob > np.uint8(self.cutoff)
        score = dice(pred, truth)
        fp, fn = pred & ~truth, truth & ~pred
        overlay = self.out_dir / f"{rank:0{self.digits}d}_{image_id}.png"
        drawn = label(paint(image, truth, fp, fn, OVERLAY_WIDTH), [f"Dice {score:.4f}", image_id])
        atomic_write_bytes(overlay, _png(drawn))
        thumbnail = label(paint(image, truth, fp, fn, TILE_WIDTH), [f"{rank}. {score:.4f}"])
        worst = Worst(rank, image_id, score, int(fp.sum()), int(fn.sum()), overlay, {})
        return worst, thumbnail


def sheet(thumbnails: Sequence[np.ndarray], columns: int = SHEET_COLUMNS) -> bytes:
    """The thumbnails in a grid, row by row, as a palette PNG: ``SHEET_COLOURS`` colours, no dithering
    (which PNG compresses badly), the drawn colours exact."""
    columns, rows = min(columns, len(thumbnails)), math.ceil(len(thumbnails) / columns)
    height = max(t.shape[0] for t in thumbnails) + SHEET_GAP
    width = max(t.shape[1] for t in thumbnails) + SHEET_GAP
    grid = np.full((rows * height - SHEET_GAP, columns * width - SHEET_GAP, 3), 255, np.uint8)
    for i, tile in enumerate(thumbnails):
        y, x = i // columns * height, i % columns * width
        grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    # The photos share the palette's first colours; the drawn ones keep exact entries of their own, which
    # median cut would blend into a dull red among so many photo pixels.
    photo = SHEET_COLOURS - len(EXACT)
    quantised = Image.fromarray(grid).quantize(photo, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    indices = np.array(quantised)
    colours = (quantised.getpalette() or [])[: 3 * photo]
    colours += [0] * (3 * photo - len(colours))
    for i, colour in enumerate(EXACT, photo):
        indices[(grid == colour).all(axis=-1)] = i
        colours += colour
    palette = Image.fromarray(indices, "P")
    palette.putpalette(colours)
    png = io.BytesIO()
    palette.save(png, format="PNG", optimize=True)
    return png.getvalue()


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Overlays an earlier gallery in ``out_dir`` listed that this one does not (another K, other maps):
    only files its own list names are removed, never anything else in the folder."""
    listing = out_dir / runs.WORST_LIST
    if not listing.is_file():
        return
    with open(listing, newline="") as f:
        names = {row.get("overlay") or "" for row in csv.DictReader(f)}
    for name in names - keep:
        if name.endswith(".png") and Path(name).name == name:
            (out_dir / name).unlink(missing_ok=True)


def log_wandb(folder: Path, out_dir: Path, worst: Sequence[Worst], sheet_path: Path) -> Path | None:
    """A W&B run of job type ``gallery`` under ``out_dir``: the worst images as a ``wandb.Table`` and the
    contact sheet. Offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads it). Returns its
    folder (None when W&B is disabled)."""
    import wandb

    folder = Path(os.path.abspath(folder))
    is_oof = folder.name == runs.OOF
    run = wandb.init(
        project="carvana",
        job_type="gallery",
        group=runs.experiment_of(folder.parent) if is_oof else None,
        name=f"{runs.experiment_of(folder.parent)}-{folder.parent.name}-worst" if is_oof else out_dir.name,
        dir=str(out_dir),
        mode=None if "WANDB_MODE" in os.environ else "offline",
        config={"folder": str(folder), "k": len(worst)},
    )
    rows = wandb.Table(columns=["image", "rank", "id", "dice", "fp", "fn", *CAR_COLUMNS])
    for w in worst:
        image = wandb.Image(str(w.overlay), caption=f"{w.image_id} {w.dice:.4f}")
        rows.add_data(image, w.rank, w.image_id, w.dice, w.fp, w.fn, *(w.car.get(c, "") for c in CAR_COLUMNS))
    run.log({"gallery/worst": rows, "gallery/sheet": wandb.Image(str(sheet_path))})
    run_dir = None if run.disabled else Path(run.dir).parent
    run.finish()
    return run_dir


def gallery(
    folder: str | Path,
    masks_dir: str | Path,
    k: int = 16,
    images_dir: str | Path | None = None,
    metadata: str | Path | None = None,
    out_dir: str | Path | None = None,
    threshold: float = 0.5,
    workers: int = 0,
) -> tuple[list[Worst], Path, str]:
    """Draw the ``k`` lowest-Dice images of ``folder`` (those with a mask in ``masks_dir``).

    ``images_dir`` defaults to ``train/`` beside ``masks_dir``, ``metadata`` to its ``metadata.csv`` (none if
    absent), ``out_dir`` to ``runs.gallery_dir(folder)``; ties are broken by image id. Returns the images,
    worst first, the contact sheet, and where the scores came from.
    """
    folder, masks_dir = Path(folder), Path(masks_dir)
    if k < 1:
        raise CarvanaError(f"-k must be >= 1, got {k}")
    check_fraction("threshold", threshold)
    check_workers(workers)
    files = runs.input_maps(folder)
    ids = list(files)
    runs.finished_manifest(folder, ids)
    check_folder(masks_dir, "masks folder")
    images_dir = masks_dir.parent / TRAIN_DIR if images_dir is None else Path(images_dir)
    check_folder(images_dir, "image folder")
    if metadata is None and (masks_dir.parent / METADATA).is_file():
        metadata = masks_dir.parent / METADATA
    cars = {} if metadata is None else read_metadata(metadata)
    masks = {entry.name for entry in os.scandir(masks_dir)}
    maps, ids = len(ids), [image_id for image_id in ids if mask_path(masks_dir, image_id).name in masks]
    if not ids:
        raise CarvanaError(f"no map in {folder} has a <id>{MASK_SUFFIX} in {masks_dir}")
    unmasked = f"; {maps - len(ids)} maps without a mask left out" if len(ids) < maps else ""

    cutoff = math.floor(threshold * 255)
    stored = stored_scores(folder, ids, threshold)
    if stored is None:
        pairs = [(str(files[i]), str(mask_path(masks_dir, i))) for i in ids]
        scored = imap_unordered(functools.partial(_score, cutoff=cutoff), pairs, workers)
        scores = dict(track(scored, len(pairs), f"scoring {folder}"))
        source = f"of {len(ids)} maps scored{unmasked}"
    else:
        source = f"of {len(ids)}, their Dice from {stored[0]}{unmasked}"
        scores = stored[1]
    chosen = sorted(ids, key=lambda image_id: (scores[image_id], image_id))[:k]
    check_files([[image_path(images_dir, image_id) for image_id in chosen]], "image")

    out_dir = runs.gallery_dir(folder) if out_dir is None else Path(out_dir)
    draw = _Draw(masks_dir, images_dir, out_dir, cutoff, len(str(len(chosen))))
    jobs = [(rank, image_id, files[image_id]) for rank, image_id in enumerate(chosen, 1)]
    drawn = sorted(imap_unordered(draw, jobs, workers), key=lambda d: d[0].rank)
    for w, _ in drawn:
        if stored is not None and not math.isclose(w.dice, scores[w.image_id], rel_tol=1e-9):
            raise CarvanaError(
                f"{stored[0]}: {w.image_id} has Dice {scores[w.image_id]:.6f} there, but its map scores "
                f"{w.dice:.6f} against {mask_path(masks_dir, w.image_id)}; rerun carvana oof {folder.parent} "
                "or delete it"
            )
    worst = [replace(w, car=cars.get(w.car_id, {})) for w, _ in drawn]
    sheet_path = atomic_write_bytes(runs.contact_sheet(out_dir), sheet([thumbnail for _, thumbnail in drawn]))
    _remove_stale(out_dir, {w.overlay.name for w in worst})
    write_csv(out_dir / runs.WORST_LIST, COLUMNS, [w.row() for w in worst])
    return worst, sheet_path, source


def listing(worst: Sequence[Worst]) -> str:
    """The gallery as printed: one line per image, worst first."""
    rows = [[str(value) for value in w.row()[:-1]] for w in worst]
    header = list(COLUMNS[:-1])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(n) for v, n in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: draw the worst K images, print their table and the files; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="carvana gallery", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a prediction folder, e.g. <run>/oof")
    parser.add_argument("masks_dir", type=Path, help=f"true masks <id>{MASK_SUFFIX}, e.g. <root>/{MASKS_DIR}")
    parser.add_argument("-k", type=int, default=16, help="how many of the worst images (default 16)")
    parser.add_argument(
        "--images", type=Path, help=f"the photos <id>.jpg (default: {TRAIN_DIR}/ beside MASKS_DIR)"
    )
    parser.add_argument(
        "--metadata", type=Path, help=f"the cars' make and model (default: {METADATA} beside it)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the gallery folder (default <run>/{runs.OOF_WORST}, or <folder>{runs.WORST_SUFFIX})",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="car where map > threshold*255")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    parser.add_argument("--wandb", action="store_true", help="also log the gallery as a W&B table")
    args = parser.parse_args(argv)

    def action() -> str:
        worst, sheet_path, source = gallery(
            args.folder,
            args.masks_dir,
            args.k,
            args.images,
            args.metadata,
            args.out,
            args.threshold,
            args.workers,
        )
        out_dir = worst[0].overlay.parent
        lines = [f"the {len(worst)} lowest-Dice images ({source}):", listing(worst)]
        lines += [
            f"  overlays {out_dir}",
            f"  list     {out_dir / runs.WORST_LIST}",
            f"  sheet    {sheet_path}",
        ]
        if args.wandb:
            run_dir = log_wandb(args.folder, out_dir, worst, sheet_path)
            if run_dir is not None:
                lines.append(f"  W&B      {run_dir}")
        return "\n".join(lines)

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
