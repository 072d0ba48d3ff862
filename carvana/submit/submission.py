"""Kaggle submission files: written from a prediction folder, and checked before upload.

The prediction folder holds one map per test image (``carvana.runs``): 8-bit probabilities (v means v/255)
at the image's original resolution, ``image_id`` being the stem of the sample's ``img`` column.
A full submission is 100,064 rows of about 12 kB each, so rows are streamed in sample order from worker
processes, and the file only appears under its final name once it is complete. Every map is vetted first
(present, a whole file, the right size: small reads each), so bad input is refused before any writing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import gzip
import io
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from carvana import runs
from carvana.data.kaggle import SAMPLE_SUBMISSION
from carvana.errors import (
    CarvanaError,
    check_fraction,
    check_shape,
    check_workers,
    normalised_weights,
    run_command,
)
from carvana.files import atomic_path, temp_files
from carvana.progress import track
from carvana.submit import ensemble, rle
from carvana.submit.postprocess import PostProcess
from carvana.workers import available_cpus, pool

log = logging.getLogger(__name__)

HEADER = "img,rle_mask"
_GZIP_MAGIC = b"\x1f\x8b"

Postprocess = Callable[[np.ndarray], np.ndarray]


def _open_text(path: Path, what: str) -> IO[str]:
    """Text reader for a .csv or gzip-compressed file (told apart by content, not name)."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        if magic == _GZIP_MAGIC:
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline=None)
        return open(path, encoding="utf-8", newline=None)
    except OSError as err:
        raise CarvanaError(f"cannot read {what} {path}: {err.strerror or err}") from None


@contextlib.contextmanager
def _csv_rows(path: Path, what: str) -> Iterator[IO[str]]:
    """The lines after a checked ``img,rle_mask`` header; read errors become a one-line CarvanaError."""
    with _open_text(path, what) as f:
        try:
            header = f.readline().rstrip("\n")
            if header != HEADER:
                raise CarvanaError(f"{path}: header is {header[:60]!r}, expected {HEADER!r}")
            yield f
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise CarvanaError(f"cannot read {what} {path}: {err}") from None


def read_sample(path: str | os.PathLike) -> list[str]:
    """The ``img`` column of a sample submission, in its order (the order Kaggle expects the rows in); an
    image listed twice is an error, since a submission written or checked against it would repeat a row."""
    with _csv_rows(Path(path), "sample submission") as f:
        lines = f.read().splitlines()
    images = [line.partition(",")[0] for line in lines if line]
    first_row: dict[str, int] = {}
    for row, img in enumerate(images, 1):
        if first_row.setdefault(img, row) != row:
            raise CarvanaError(f"{path}: row {row} ({img[:60]}) repeats row {first_row[img]}")
    return images


def _image_id(img: str) -> str:
    return Path(img).stem


# (cutoff, postprocess, weights, vote): mask = map > cutoff, then postprocess; the weights and vote combine
# the maps of several folders (carvana.ensemble.combine).
Settings = tuple[int, Postprocess | None, tuple[float, ...], bool]
_worker_settings: Settings | None = None


def _encode_map(paths: tuple[str, ...], settings: Settings) -> str:
    """RLE of one image's prediction map, or of the combination of its maps in several folders."""
    cutoff, postprocess, weights, vote = settings
    path = paths[0]
    mask = ensemble.combined_mask(paths, weights, vote, cutoff)
    if postprocess is not None:
        out = np.asarray(postprocess(mask))
        if out.shape != mask.shape:
            raise CarvanaError(f"postprocess turned the {mask.shape} mask of {path} into shape {out.shape}")
        mask = out
    return rle.encode(mask)


def _init_worker(settings: Settings) -> None:
    """Pool initializer: settings travel once per process instead of once per task."""
    global _worker_settings
    _worker_settings = settings


def _encode_map_in_worker(paths: tuple[str, ...]) -> str:
    assert _worker_settings is not None, "_init_worker did not run"
    return _encode_map(paths, _worker_settings)


def _check_sizes(paths: Sequence[tuple[str, ...]], shape: tuple[int, int] | None) -> None:
    """Every map must be a whole file of ``shape``, or of the first row's map's size when None (a submission's
    masks are all the test images' size), read from their headers before anything is written."""
    reference = "the size asked for"
    if shape is None:
        shape, reference = runs.map_size(paths[0][0]), f"the size of the first row's map {paths[0][0]}"
    for group in paths:
        for path in group:
            check_shape(Path(path).stem, path, runs.map_size(path), shape, reference)


def write(
    pred_dir: str | os.PathLike | Sequence[str | os.PathLike],
    sample_submission: str | os.PathLike,
    out: str | os.PathLike,
    threshold: float = 0.5,
    postprocess: Postprocess | None = None,
    subset: bool = False,
    workers: int = 0,
    compress: bool = False,
    shape: tuple[int, int] | None = None,
    weights: Sequence[float] | None = None,
    vote: bool = False,
) -> Path:
    """Write the submission for ``pred_dir`` in sample order, atomically; returns ``out``. The part a killed
    write of ``out`` left under a temporary name (up to the 1.2 GB of a full file) is removed first.

    mask = map > threshold*255, then ``postprocess(mask)`` (a module-level function when workers > 1, so
    that start methods other than fork can pickle it). ``subset`` writes only the rows that have a map
    instead of failing when one is missing; every map must be ``shape`` (H, W), by default the first's;
    ``workers=0`` uses every CPU, 1 encodes in this process; ``compress`` writes gzip to an ``out`` ending
    in .gz. ``pred_dir`` may be a list of prediction folders: each row is then their combination with
    ``weights`` and ``vote`` as ``carvana.submit.ensemble.average`` makes it, computed on the fly, so the rows
    are those of averaging into a folder first, without encoding and decoding its maps: each map read once.
    """
    folders = [Path(pred_dir)] if isinstance(pred_dir, str | os.PathLike) else [Path(d) for d in pred_dir]
    sample_submission, out = Path(sample_submission), Path(out)
    check_fraction("threshold", threshold)
    check_workers(workers)
    if not folders:
        raise CarvanaError("no prediction folder")
    norm = normalised_weights(weights, len(folders))
    if compress != out.name.endswith(".gz"):
        raise CarvanaError(f"output {out} must end in .gz exactly when compress is set (compress={compress})")
    present = [runs.input_maps(folder) for folder in folders]
    images = read_sample(sample_submission)
    wanted = [_image_id(img) for img in images]
    for folder, found in zip(folders, present, strict=True):
        known = set(found)
        missing = [image_id for image_id in wanted if image_id not in known]
        if missing and not subset:
            raise CarvanaError(
                f"{len(missing)} of {len(images)} images in {sample_submission.name} have no "
                f"prediction in {folder}, first: {', '.join(missing[:3])} (subset=True writes "
                "only the rows present)"
            )
        runs.finished_manifest(folder, list(found))
    shared = set(present[0]).intersection(*present[1:])
    rows = [img for img, image_id in zip(images, wanted, strict=True) if image_id in shared]
    if not rows:
        where = ", ".join(map(str, folders))
        raise CarvanaError(f"no prediction in {where} matches an image of {sample_submission.name}")
    paths = [tuple(str(found[_image_id(img)]) for found in present) for img in rows]
    _check_sizes(paths, shape)
    workers = min(workers or available_cpus(), len(rows))
    settings: Settings = (math.floor(threshold * 255), postprocess, norm, vote)
    for stale in temp_files(out.parent, glob.escape(out.name)):
        stale.unlink(missing_ok=True)

    try:
        with atomic_path(out) as tmp, contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(tmp, "xb"))
            if compress:  # mtime=0 and a fixed inner name keep the gzip bytes reproducible
                raw = stack.enter_context(gzip.GzipFile(out.name[:-3], "wb", 6, raw, mtime=0))
            text = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8", newline="\n"))
            if workers == 1:
                encoded = map(functools.partial(_encode_map, settings=settings), paths)
            else:
                processes = stack.enter_context(pool(workers, _init_worker, (settings,)))
                chunksize = max(1, min(32, len(paths) // (workers * 4)))
                encoded = processes.imap(_encode_map_in_worker, paths, chunksize=chunksize)
            text.write(HEADER + "\n")
            for img, row_rle in zip(rows, track(encoded, len(rows), f"submission {out}"), strict=True):
                text.write(f"{img},{row_rle}\n")
    except OSError as err:
        raise CarvanaError(f"cannot write {out}: {err.strerror or err}") from None
    return out


def check(
    path: str | os.PathLike, sample_submission: str | os.PathLike, shape: tuple[int, int] = rle.SHAPE
) -> int:
    """Validate a submission (.csv or .csv.gz) against the sample; returns its row count.

    Checks the header, that the ``img`` column equals the sample's row for row, and every RLE; the
    CarvanaError names the first row at fault, which Kaggle's own rejection does not.
    """
    path, sample_name = Path(path), Path(sample_submission).name
    images = read_sample(sample_submission)
    count = 0
    with _csv_rows(path, "submission") as f:
        for count, line in enumerate(f, 1):
            img, comma, encoded = line.rstrip("\n").partition(",")
            if count > len(images):
                raise CarvanaError(
                    f"{path.name}: row {count} ({img[:60]}) is past the {len(images)} rows of {sample_name}"
                )
            if img != images[count - 1]:
                raise CarvanaError(
                    f"{path.name}: row {count} is {img[:60]!r}, {sample_name} has {images[count - 1]!r} there"
                )
            if not comma:
                raise CarvanaError(f"{path.name}: row {count} ({img}) has no rle_mask column")
            reason = rle.validate(encoded, shape)
            if reason is not None:
                raise CarvanaError(f"{path.name}: row {count} ({img}): bad RLE, {reason}")
    if count < len(images):
        raise CarvanaError(
            f"{path.name}: {count} rows, {sample_name} has {len(images)}; first missing: "
            f"row {count + 1} ({images[count]})"
        )
    return count


class SubmissionStep:
    """``predict.py``'s submission: once every map is written, ``submission.csv`` in the sample's row order,
    checked row by row before it is kept. The ``submission`` node of ``conf/predict.yaml``.

    Args:
        sample: the sample submission (the row order); None takes ``<data root>/sample_submission.csv``.
        out: the file to write; None writes ``submission.csv`` (``.csv.gz`` with ``compress``) in the
            prediction folder.
        subset: write only the rows that have a map (a partial file that Kaggle refuses).
        compress: gzip the output.
        threshold: mask = probability > threshold.
        postprocess: applied to every thresholded mask (``carvana.submit.postprocess.PostProcess``).
        workers: encoding processes; 0 = one per CPU.
    """

    def __init__(
        self,
        sample: str | None = None,
        out: str | None = None,
        subset: bool = False,
        compress: bool = False,
        threshold: float = 0.5,
        postprocess: Postprocess | None = None,
        workers: int = 0,
    ):
        self.sample, self.out = sample, out
        self.subset, self.compress = subset, compress
        # postprocess=none composes to an empty node: nothing to apply
        self.threshold, self.postprocess, self.workers = threshold, postprocess or None, workers

    def sample_path(self, root: Path) -> Path:
        """The sample submission for data ``root``; checked before any image is predicted."""
        sample = Path(self.sample or root / SAMPLE_SUBMISSION)
        if not sample.is_file():
            raise CarvanaError(
                f"{sample}: no sample submission (set submission.sample=..., or submission=null "
                "to write only the maps)"
            )
        return sample

    def __call__(self, pred_dir: Path, root: Path, first_id: str) -> str:
        """Write and check the submission of ``pred_dir``, every map the size of ``first_id``'s; returns the
        line ``predict.py`` prints."""
        sample = self.sample_path(root)
        shape = runs.map_size(runs.map_files(pred_dir)[first_id])
        name = runs.SUBMISSION + (".gz" if self.compress else "")
        out = Path(self.out or pred_dir / name)
        write(
            pred_dir,
            sample,
            out,
            threshold=self.threshold,
            postprocess=self.postprocess,
            subset=self.subset,
            workers=self.workers,
            compress=self.compress,
            shape=shape,
        )
        if self.subset:
            log.warning(
                "%s: only the rows with a prediction (submission.subset=true); Kaggle needs them all", out
            )
        else:
            rows = check(out, sample, shape)
            log.info("%s: %d rows, checked against %s", out, rows, sample)
        return f"  submission {out}"


def main(argv: list[str] | None = None) -> int:
    """CLI: ``check FILE --sample S`` or ``write PRED_DIR --sample S --out FILE``; 2 on a CarvanaError."""
    parser = argparse.ArgumentParser(prog="carvana submission", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    chk = commands.add_parser("check", help="validate a submission file against the sample submission")
    chk.add_argument("file", type=Path)
    chk.add_argument("--sample", type=Path, required=True, help="sample_submission.csv (row order)")
    chk.add_argument("--height", type=int, default=rle.SHAPE[0])
    chk.add_argument("--width", type=int, default=rle.SHAPE[1])
    wrt = commands.add_parser("write", help="write a submission from a folder of probability maps")
    wrt.add_argument("pred_dir", type=Path, nargs="+", help="prediction folder(s); several are combined")
    wrt.add_argument("--sample", type=Path, required=True, help="sample_submission.csv (row order)")
    wrt.add_argument("--out", type=Path, required=True)
    wrt.add_argument("--threshold", type=float, help="mask = map > threshold (default 0.5)")
    wrt.add_argument(
        "--selection",
        type=Path,
        help="carvana select's file: its threshold and post-processing, and with several folders its weights",
    )
    wrt.add_argument("--weights", type=float, nargs="+", help="one per prediction folder (default: equal)")
    wrt.add_argument("--vote", action="store_true", help="majority vote of the folders instead of the mean")
    wrt.add_argument("--subset", action="store_true", help="write only the rows that have a map")
    wrt.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    wrt.add_argument("--gzip", action="store_true", help="gzip the output (name it .csv.gz)")
    wrt.add_argument("--height", type=int, help="every map's height (with --width; default: the first's)")
    wrt.add_argument("--width", type=int, help="every map's width (with --height; default: the first's)")
    args = parser.parse_args(argv)

    def action() -> str:
        if args.command == "check":
            rows = check(args.file, args.sample, (args.height, args.width))
            return f"{args.file.name}: OK, {rows} rows"
        if (args.height is None) != (args.width is None):
            raise CarvanaError("--height and --width go together")
        shape = None if args.height is None else (args.height, args.width)
        threshold, weights, postprocess = args.threshold, args.weights, None
        if args.selection is not None:
            if threshold is not None or weights is not None or args.vote:
                raise CarvanaError("--selection sets these: drop --threshold, --weights, --vote")
            record = runs.read_selection(args.selection)
            threshold, steps = record["threshold"], PostProcess(**record["postprocess"])
            postprocess = None if steps == PostProcess() else steps
            if len(args.pred_dir) > 1:
                weights = ensemble.selection_weights(args.selection, len(args.pred_dir))
        out = write(
            args.pred_dir,
            args.sample,
            args.out,
            threshold=0.5 if threshold is None else threshold,
            postprocess=postprocess,
            subset=args.subset,
            workers=args.workers,
            compress=args.gzip,
            shape=shape,
            weights=weights,
            vote=args.vote,
        )
        return f"{out.name}: written"

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
