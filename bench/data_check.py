"""Case 7: ``carvana data check`` on the real files against the loop a user writes to check them.

Project: ``carvana.data.check.check`` of the real Kaggle-layout folder, with one process per CPU and with one
process: names and pairs, every JPEG read whole (start and end markers, then decoded) and every GIF mask
(trailer, decode, size against its image, values), the two CSVs. Baseline: the serial loop that "checks" the
same files: ``cv2.imread`` of each train and test JPEG, ``np.array(Image.open(mask))`` of each mask, image
and mask sizes compared. Both count the files they decode (train images, masks, test images).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shutil
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.data import full_root
from bench.harness import Case, Settings, compare, interleave, rate
from carvana.data.check import Report, check
from carvana.data.kaggle import (
    MASKS_DIR,
    METADATA,
    SAMPLE_SUBMISSION,
    TEST_DIR,
    Sample,
    test_samples,
    train_samples,
)
from carvana.workers import available_cpus

COMPETITION_PAIRS, COMPETITION_TESTS = 5088, 100_064
COMPETITION_FILES = 2 * COMPETITION_PAIRS + COMPETITION_TESTS
SMOKE_PAIRS, SMOKE_TESTS = 3, 2
TRUNCATED_PAIRS = 3


def quiet_check(root: Path, workers: int) -> Report:
    """``check`` without its progress lines on stderr: four per call would bury the figures."""
    with contextlib.redirect_stderr(io.StringIO()):
        return check(root, workers=workers)


def user_loop(pairs: list[Sample], tests: list[Path]) -> list[str]:
    """The baseline: every file decoded once, serially, and the sizes of each pair compared."""
    problems = []
    for pair in pairs:
        image = cv2.imread(str(pair.image))
        mask = np.array(Image.open(pair.mask))
        if image is None:
            problems.append(f"{pair.image}: does not decode")
        elif image.shape[:2] != mask.shape[:2]:
            problems.append(f"{pair.mask}: size {mask.shape[:2]}, image {image.shape[:2]}")
    for test in tests:
        if cv2.imread(str(test)) is None:
            problems.append(f"{test}: does not decode")
    return problems


def link_subset(source: Path, folder: Path, pairs: int, tests: int) -> Path:
    """A Kaggle-layout ``folder`` of links to the first ``pairs`` train pairs and ``tests`` test images of
    ``source``, and to its two CSVs: the smoke run's input."""
    for sub in ("train", MASKS_DIR, TEST_DIR):
        (folder / sub).mkdir(parents=True)
    for pair in train_samples(source)[:pairs]:
        assert pair.mask is not None
        (folder / "train" / pair.image.name).symlink_to(pair.image)
        (folder / MASKS_DIR / pair.mask.name).symlink_to(pair.mask)
    for test in test_samples(source)[:tests]:
        (folder / TEST_DIR / test.image.name).symlink_to(test.image)
    for name in (SAMPLE_SUBMISSION, METADATA):
        if (source / name).is_file():
            (folder / name).symlink_to(source / name)
    return folder


def truncated_copy(source: Path, folder: Path) -> tuple[Path, Path]:
    """Copies of the first pairs of ``source`` in ``folder``, the first JPEG cut to half its bytes, as an
    interrupted download leaves it; returns the folder and that JPEG."""
    (folder / "train").mkdir(parents=True)
    (folder / MASKS_DIR).mkdir()
    copies = []
    for pair in train_samples(source)[:TRUNCATED_PAIRS]:
        assert pair.mask is not None
        copies.append(Path(shutil.copyfile(pair.image, folder / "train" / pair.image.name)))
        shutil.copyfile(pair.mask, folder / MASKS_DIR / pair.mask.name)
    cut = copies[0]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return folder, cut


PROJECT, SINGLE, THEIRS = "check(workers=0)", "check(workers=1)", "serial cv2 + PIL loop"


def timings(root: Path, settings: Settings, start_method: str) -> tuple[dict[str, list[float]], float]:
    """The three variants interleaved, and the fixed part of a check in seconds: the names pass and the two
    CSVs, timed on a folder of one pair beside the same CSVs (its two files' decodes taken out at the
    one-process rate). ``run`` calls this in a fresh process: the decodes' speed depends on glibc's malloc
    settings, which other cases change for the whole bench process (``loading``'s dataset calls
    ``reuse_freed_buffers``, ``prediction`` ``unmap_large_buffers``), and the workers of check(workers=0)
    would fork with them. ``start_method`` is the bench process's: a spawned process defaults to spawn,
    which would have each check(workers=0) import the bench in its workers."""
    multiprocessing.set_start_method(start_method, force=True)
    pairs, tests = train_samples(root), [sample.image for sample in test_samples(root)]
    files = 2 * len(pairs) + len(tests)
    runs = interleave(
        {
            PROJECT: lambda: rate(files, lambda: quiet_check(root, 0)),
            SINGLE: lambda: rate(files, lambda: quiet_check(root, 1)),
            THEIRS: lambda: rate(files, lambda: user_loop(pairs, tests)),
        },
        settings,
    )
    one_pair = link_subset(full_root(), settings.scratch / "one_pair", 1, 0)
    fixed = statistics.median(
        max(0.0, 1 / rate(1, lambda: quiet_check(one_pair, 1)) - 2 / statistics.median(runs[SINGLE]))
        for _ in range(settings.repeats)
    )
    return runs, fixed


def run(settings: Settings) -> Case:
    full = full_root()
    root = full
    if settings.smoke:
        root = link_subset(full, settings.scratch / "subset", SMOKE_PAIRS, SMOKE_TESTS)
    pairs, tests = train_samples(root), [sample.image for sample in test_samples(root)]
    files = 2 * len(pairs) + len(tests)
    cpus = available_cpus()  # what check(workers=0) starts
    case = Case("data_check", "carvana data check of the real 1918x1280 files against a serial decode loop")
    case.setup = {
        "folder": f"{len(pairs)} train pairs + {len(tests)} test images ({files} files)"
        + (", links to the first of the real ones" if settings.smoke else ", the real ones"),
        "processes": f"all timed in one fresh process (glibc malloc defaults); check(workers=0) starts "
        f"{min(cpus, len(pairs) + len(tests))} workers from it, one per CPU "
        f"({multiprocessing.get_start_method()})",
        "load average at the case start": [round(x, 2) for x in os.getloadavg()],
    }

    clean = quiet_check(root, 0)
    case.checks["no_problems_on_real_files"] = not clean.problems
    broken, cut = truncated_copy(full, settings.scratch / "truncated")
    found = quiet_check(broken, 0).problems
    case.checks["one_problem_naming_truncated_jpeg"] = len(found) == 1 and found[0].startswith(f"{cut}: ")
    missed = not user_loop(train_samples(broken), [])

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        runs, fixed = fresh.submit(timings, root, settings, multiprocessing.get_start_method()).result()
    case.setup["load average at the case end"] = [round(x, 2) for x in os.getloadavg()]
    head = compare("one process per CPU, vs serial decode loop", "files/s", runs, PROJECT, THEIRS)
    one = compare("one process, vs serial decode loop", "files/s", runs, SINGLE, THEIRS)
    case.comparisons += [head, one]

    sample = root / SAMPLE_SUBMISSION
    rows = sum(1 for _ in sample.open()) - 1 if sample.is_file() else 0

    def minutes(per_second: float) -> str:
        return f"{COMPETITION_FILES / per_second / 60:.0f} min"

    def per_file(per_second: float) -> float:
        """Seconds per file with the fixed part of a check taken out."""
        return max(1e-9, 1 / per_second - fixed / files)

    case.notes += [
        f"the whole competition ({COMPETITION_PAIRS:,} train pairs + {COMPETITION_TESTS:,} test images, "
        f"{COMPETITION_FILES:,} files) at these rates: {minutes(head.project)} with check(workers=0), "
        f"{minutes(one.project)} with one process, {minutes(head.baseline)} for the serial loop",
        f"of each check, {fixed:.2f} s is a fixed cost, the names pass and the two CSVs ({rows:,} "
        f"{SAMPLE_SUBMISSION} rows; timed on a one-pair folder): counted once, not per file, the "
        "competition would take "
        f"{COMPETITION_FILES * per_file(head.project) / 60 + fixed / 60:.0f} min with check(workers=0) and "
        f"{COMPETITION_FILES * per_file(one.project) / 60 + fixed / 60:.0f} min with one process",
        f"per file in one process: {1e3 * per_file(one.project):.1f} ms for the check (fixed cost taken out) "
        f"against {1e3 / one.baseline:.1f} ms for the loop, which does less: the check reads each file whole "
        "for its markers before decoding it, and takes each mask's maximum",
        f"on a copy of {TRUNCATED_PAIRS} pairs with {cut.name} cut to half its bytes, the serial loop "
        + (
            "found nothing: cv2.imread decodes a truncated JPEG, grey below the cut, with only a libjpeg "
            "warning on stderr"
            if missed
            else "also reported it"
        ),
    ]
    return case
