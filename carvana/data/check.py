"""Checking a Kaggle-layout folder before anything trains on it: ``carvana data check ROOT``.

A broken pair or a truncated download should cost seconds, not an epoch, so every problem is one line naming
its file. Two passes: the names (``check_names``: images and masks paired, ids unique; training runs it
before its first step), then every file decoded in worker processes, which is where the time goes. A folder
holding part of the competition (fewer cars or angles, no ``test/``, sample rows without their image) is
clean: those facts are information lines, not problems.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from carvana.data.buffers import reuse_freed_buffers
from carvana.data.kaggle import (
    ANGLES,
    IMAGE_SUFFIX,
    MASK_SUFFIX,
    MASKS_DIR,
    METADATA,
    METADATA_ID,
    SAMPLE_SUBMISSION,
    TEST_DIR,
    image_path,
    mask_path,
)
from carvana.errors import CarvanaError, check_workers, print_error
from carvana.progress import track
from carvana.workers import imap_unordered

JPEG_SUFFIXES = {".jpg", ".jpeg"}  # compared lower-cased: X.JPG or X.jpeg beside X.jpg is a second X
SAMPLE_HEADER = ["img", "rle_mask"]
SCALED_VALUES = {0, 255}  # besides {0, 1}, what read_mask binarises right
SHOWN = 3  # problems a training run's error quotes; the check itself prints them all


@dataclass
class Report:
    """What a check found: each problem names a file and makes the folder unfit; info lines are facts."""

    problems: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    summary: str = ""


@dataclass
class _Names:
    """The folder's files by image id: what the cheap pass sees without opening any of them."""

    images: dict[str, Path]
    masks: dict[str, Path]
    tests: dict[str, Path]
    problems: list[str]


@dataclass(frozen=True)
class _Decoded:
    """One pair's (or test image's) decode: its image size as (width, height), its problems, whether its
    mask uses {0, 255}."""

    size: tuple[int, int] | None
    problems: tuple[str, ...]
    scaled: bool


def _images(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The ``<id>.jpg`` files of ``folder`` by id, and a problem for every other JPEG spelling: beside
    ``X.jpg``, ``X.JPG`` or ``X.jpeg`` is a second image under one id; alone, a file the pipeline skips."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix.lower() in JPEG_SUFFIXES and path.is_file():
            groups[path.stem].append(path)
    images, problems = {}, []
    for image_id, paths in groups.items():
        read = image_path(folder, image_id)
        for path in paths:
            if path == read:
                images[image_id] = path
            elif read in paths:
                problems.append(f"{path}: duplicate image id {image_id} (beside {read.name})")
            else:
                problems.append(f"{path}: not read, the pipeline reads only {IMAGE_SUFFIX} names")
    return images, problems


def _names(root: Path, images_dir: str) -> _Names:
    """Pairs by name: an image without a mask, a mask without an image, an id twice (also across train and
    test, where it would leak), a missing train or mask folder; a missing ``test/`` is only a subset."""
    train_dir, masks_dir = root / images_dir, root / MASKS_DIR
    problems = [
        f"{folder}: folder not found (is {root} a Kaggle-layout folder?)"
        for folder in (train_dir, masks_dir)
        if not folder.is_dir()
    ]
    images, duplicates = _images(train_dir)
    tests, test_duplicates = _images(root / TEST_DIR)
    masks = {}
    if masks_dir.is_dir():
        masks = {
            path.name.removesuffix(MASK_SUFFIX): path for path in sorted(masks_dir.glob(f"*{MASK_SUFFIX}"))
        }
    if train_dir.is_dir() and not images:
        problems.append(f"{train_dir}: no {IMAGE_SUFFIX} images")
    problems += duplicates + test_duplicates
    problems += [
        f"{images[i]}: no mask {mask_path(masks_dir, i)}" for i in sorted(images.keys() - masks.keys())
    ]
    problems += [
        f"{masks[i]}: no image {image_path(train_dir, i)}" for i in sorted(masks.keys() - images.keys())
    ]
    problems += [
        f"{tests[i]}: duplicate image id {i} (also {images[i]})" for i in sorted(images.keys() & tests.keys())
    ]
    return _Names(images, masks, tests, problems)


def check_names(root: str | Path, images_dir: str = "train") -> list[str]:
    """The cheap pass, no file opened: one problem per broken pair or duplicate id, each naming its file."""
    return _names(Path(root), images_dir).problems


def require_names(root: str | Path, images_dir: str = "train") -> None:
    """``check_names`` as one error quoting the first problems and their count, for training to raise before
    its first step."""
    problems = check_names(root, images_dir)
    if problems:
        raise CarvanaError(
            f"{root}: {_count(len(problems), 'problem')} with its file names: {'; '.join(problems[:SHOWN])}"
            f"{'; ...' if len(problems) > SHOWN else ''} (carvana data check {root} lists them all)"
        )


def _jpeg_shape(path: Path) -> tuple[int, int]:
    """(height, width) of a JPEG that decodes whole. OpenCV decodes a truncated JPEG into a partly grey image
    with only a warning, so the end-of-image marker is checked first."""
    data = path.read_bytes()
    if not data.startswith(b"\xff\xd8"):
        raise CarvanaError("corrupt JPEG: no start-of-image marker")
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise CarvanaError("truncated JPEG: no end-of-image marker")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise CarvanaError("corrupt JPEG: does not decode")
    return image.shape[:2]


def _mask_pixels(path: Path) -> np.ndarray:
    """The mask's pixels as ``read_mask`` sees them before binarising. Pillow reads a GIF cut short by its
    last two bytes without a word, so the trailer is checked first."""
    data = path.read_bytes()
    if data.startswith(b"GIF8") and not data.endswith(b";"):
        raise CarvanaError("truncated GIF: no trailer")
    try:
        with Image.open(io.BytesIO(data)) as gif:
            pixels = np.array(gif)
    except UnidentifiedImageError as error:
        raise CarvanaError("unreadable GIF: not an image") from error
    except (OSError, ValueError, SyntaxError) as error:  # what Pillow raises on a damaged file
        raise CarvanaError(f"unreadable GIF ({error})") from error
    return pixels[..., 0] if pixels.ndim == 3 else pixels


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _decode(job: tuple[Path | None, Path | None]) -> _Decoded:
    """Decode one (image, mask) pair, either of which may be absent (a test image, an orphan mask): runs in
    a worker process, so it returns its findings rather than raising."""
    reuse_freed_buffers()  # each decode would otherwise fault its image-sized buffers in afresh
    image, mask = job
    problems, shape, scaled = [], None, False
    if image is not None:
        try:
            shape = _jpeg_shape(image)
        except (CarvanaError, OSError) as error:
            problems.append(f"{image}: {error}")
    if mask is not None:
        try:
            pixels = _mask_pixels(mask)
        except (CarvanaError, OSError) as error:
            problems.append(f"{mask}: {error}")
        else:
            if shape is not None and pixels.shape != shape:
                problems.append(f"{mask}: mask is {_size(pixels.shape)}, its image {image} is {_size(shape)}")
            # A {0, 1} mask is told by its maximum: np.unique costs as much as the decode.
            values = np.unique(pixels).tolist() if pixels.max(initial=0) > 1 else []
            scaled = bool(values) and set(values) <= SCALED_VALUES
            if values and not scaled:
                more = f", ... ({len(values)} values)" if len(values) > 8 else ""
                shown = ", ".join(map(str, values[:8])) + more
                problems.append(f"{mask}: mask values {shown}; expected {{0, 1}} or {{0, 255}}")
    size = (shape[1], shape[0]) if shape else None
    return _Decoded(size, tuple(problems), scaled)


def _csv_rows(path: Path, report: Report) -> list[tuple[int, list[str]]] | None:
    """(line, fields) of every non-empty row; None, with the problem reported, where it does not parse."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, strict=True)
            return [(reader.line_num, row) for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        report.problems.append(f"{path}: does not parse ({error})")
        return None


def _ragged(path: Path, rows: list[tuple[int, list[str]]], width: int) -> str | None:
    """The problem of a CSV whose rows do not all have ``width`` fields: the first such line and the count."""
    bad = [(line, len(row)) for line, row in rows if len(row) != width]
    if not bad:
        return None
    (line, fields), more = bad[0], f" ({len(bad)} such lines)" if len(bad) > 1 else ""
    return f"{path}: line {line} has {fields} fields, its header {width}{more}"


def _table(
    path: Path, report: Report, absent: str, header_ok: Callable[[list[str]], bool], bad_header: str
) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """A CSV's header and (line, fields) rows, with its absence (information), a parse error, a bad header
    or ragged rows (problems) reported; None where there is nothing more to check."""
    if not path.is_file():
        report.info.append(f"{path}: {absent}")
        return None
    rows = _csv_rows(path, report)
    if rows is None:
        return None
    if not rows or not header_ok(rows[0][1]):
        report.problems.append(f"{path}: {bad_header}")
        return None
    header, rows = rows[0][1], rows[1:]
    ragged = _ragged(path, rows, len(header))
    if ragged:
        report.problems.append(ragged)
    return header, rows


def _check_sample(root: Path, tests: dict[str, Path], report: Report) -> int:
    """Every test image listed once in ``sample_submission.csv``; rows without their image are a subset.
    Returns the number of rows."""
    path = root / SAMPLE_SUBMISSION
    table = _table(
        path,
        report,
        "absent; the test images are not checked against it",
        lambda header: header == SAMPLE_HEADER,
        f"header is not {','.join(SAMPLE_HEADER)}",
    )
    if table is None:
        return 0
    _, rows = table
    listed = Counter(row[0] for _, row in rows)
    report.problems += [f"{path}: {name} is listed {n} times" for name, n in sorted(listed.items()) if n > 1]
    names = {image.name for image in tests.values()}
    report.problems += [
        f"{image}: not listed in {path}" for _, image in sorted(tests.items()) if image.name not in listed
    ]
    absent = len(listed.keys() - names)
    if absent:
        report.info.append(
            f"{path}: {absent} of {len(listed)} rows have no image in {root / TEST_DIR} (a subset)"
        )
    return len(rows)


def _check_metadata(root: Path, cars: set[str], report: Report) -> int:
    """``metadata.csv`` parses, with an ``id`` column; training reads nothing else of it, so cars it does not
    list are information. Returns the number of cars it lists."""
    path = root / METADATA
    table = _table(
        path, report, "absent", lambda header: METADATA_ID in header, f"no {METADATA_ID} column in its header"
    )
    if table is None:
        return 0
    header, rows = table
    column = header.index(METADATA_ID)
    ids = {row[column] for _, row in rows if len(row) > column}
    unlisted = sorted(cars - ids)
    if unlisted:
        report.info.append(
            f"{path}: {len(unlisted)} of {len(cars)} train cars not listed (e.g. {unlisted[0]})"
        )
    return len(ids)


def check(root: str | Path, images_dir: str = "train", workers: int = 0) -> Report:
    """The whole check of a Kaggle-layout folder: names, every file decoded in ``workers`` processes (0 = one
    per CPU), the CSVs. Raises a ``CarvanaError`` only where there is no folder to check."""
    root = Path(root)
    if not root.is_dir():
        raise CarvanaError(
            f"{root}: no such folder (a Kaggle-layout folder holds {images_dir}/, {MASKS_DIR}/)"
        )
    check_workers(workers)
    names = _names(root, images_dir)
    report = Report(problems=list(names.problems))
    ids = sorted(names.images.keys() | names.masks.keys())
    jobs = [(names.images.get(i), names.masks.get(i)) for i in ids]
    jobs += [(image, None) for image in names.tests.values()]
    start = time.perf_counter()
    sizes: Counter[tuple[int, int]] = Counter()
    scaled = 0
    for decoded in track(imap_unordered(_decode, jobs, workers), len(jobs), f"decoding {root}"):
        report.problems += decoded.problems
        if decoded.size:
            sizes[decoded.size] += 1
        scaled += decoded.scaled
    seconds = time.perf_counter() - start

    pairs = sorted(names.images.keys() & names.masks.keys())
    angles = Counter(i.rsplit("_", 1)[0] for i in pairs)
    partial = sum(n < ANGLES for n in angles.values())
    if partial:
        report.info.append(
            f"{root / images_dir}: {partial} of {len(angles)} cars lack some of the {ANGLES} angles"
        )
    if not (root / TEST_DIR).is_dir():
        report.info.append(f"{root / TEST_DIR}: absent, no test images")
    if scaled:
        report.info.append(f"{scaled} masks use {{0, 255}} rather than {{0, 1}} (accepted: read as {{0, 1}})")
    rows = _check_sample(root, names.tests, report)
    cars = _check_metadata(root, set(angles), report)
    report.problems.sort()
    shown = ", ".join(f"{w}x{h} x{n}" for (w, h), n in sizes.most_common()) or "none"
    report.summary = (
        f"{root}: {len(pairs)} train pairs of {len(angles)} cars, {len(names.tests)} test images, "
        f"{rows} {SAMPLE_SUBMISSION} rows, {cars} {METADATA} cars; sizes {shown}; "
        f"{len(jobs)} decoded in {seconds:.1f} s; {_count(len(report.problems), 'problem')}"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: ``check ROOT [--images-dir train_hq] [--workers N]``; exit 0 when clean, 1 when it found problems,
    2 (one ``error:`` line) when there is no folder to check."""
    parser = argparse.ArgumentParser(prog="carvana data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    chk = commands.add_parser("check", help="report every problem of a Kaggle-layout folder, one line each")
    chk.add_argument("root", type=Path, help="the folder: train/, train_masks/, test/, the two CSVs")
    chk.add_argument("--images-dir", default="train", help="the training images' folder: train or train_hq")
    chk.add_argument("--workers", type=int, default=0, help="decoding processes; 0 = one per CPU")
    args = parser.parse_args(argv)
    try:
        report = check(args.root, args.images_dir, args.workers)
    except CarvanaError as error:
        return print_error(error)
    for line in report.problems:
        print(f"problem: {line}")
    for line in report.info:
        print(f"info: {line}")
    print(report.summary)
    return 1 if report.problems else 0
