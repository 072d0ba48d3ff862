"""Bad inputs of the CPU stages, as a user meets them: one ``error:`` line naming the file, exit status 2, no
traceback, and nothing at the output path.

Every stage runs on a tiny valid world (4 images of 96x64 in Kaggle's layout, two prediction folders, two
finished runs, a refiner's folds over one source), which one test damages in one way. The stages that start
in a fraction of a second run as ``python -m carvana`` subprocesses; report and refine import Lightning
(several seconds), so they run in-process through ``carvana.cli.main`` but for one subprocess each.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvana import cli
from carvana.data.kaggle import MASKS_DIR, SAMPLE_SUBMISSION, Sample, image_path, mask_path
from carvana.files import TEMP_SUFFIX
from carvana.runs import (
    CV_REPORT,
    FOLD_SCORE,
    FOLDS,
    MANIFEST,
    OOF,
    OOF_SCORE,
    RUN_CONFIG,
    fold_dir,
    map_path,
    write_folds,
    write_json,
    write_manifest,
    write_map,
)
from carvana.submit.pseudo import mask_gif
from tests.conftest import REPO

CARS = ["0a1b2c3d4e5f", "1b2c3d4e5f6a"]
IDS = [f"{car}_{angle:02d}" for car in CARS for angle in (1, 2)]
SHAPE = (64, 96)
VICTIM = IDS[1]  # the damaged map: in fold 0 of the source, and not the submission's first row
SLOW_TO_START = {"report", "refine"}  # in-process, except for the bad input below
SUBPROCESS_CASE = "manifest"


class World:
    """Valid inputs for every stage under ``root``; ``out`` is where the writing stages write."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.sample = self.data / SAMPLE_SUBMISSION
        self.submission = root / "submission.csv"
        self.a, self.b = root / "pred_a", root / "pred_b"
        self.runs = root / "outputs"
        self.refine, self.source = root / "refine", root / "source"
        self.out = root / "out"
        rng = np.random.default_rng(0)
        masks = {}
        for n, image_id in enumerate(IDS):
            masks[image_id] = np.zeros(SHAPE, np.uint8)
            masks[image_id][10 + n : 50, 10:80] = 1
            for images in ("train", "test"):
                jpeg = image_path(self.data / images, image_id)
                jpeg.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(jpeg), rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8))
            gif = mask_path(self.data / MASKS_DIR, image_id)
            gif.parent.mkdir(parents=True, exist_ok=True)
            gif.write_bytes(mask_gif(masks[image_id]))
        rows = "".join(f"{image_id}.jpg,1 1\n" for image_id in reversed(IDS))  # not sorted, as Kaggle's
        self.sample.write_text("img,rle_mask\n" + rows)
        shutil.copyfile(self.sample, self.submission)

        def confident(image_id: str) -> np.ndarray:
            return np.where(masks[image_id] == 1, 240, 10).astype(np.uint8)

        samples = [Sample(image_id, image_path(self.data / "test", image_id)) for image_id in IDS]
        for folder in (self.a, self.b):
            for image_id in IDS:
                write_map(folder, image_id, confident(image_id))
            assert write_manifest(folder, samples, {"stage": "test"})

        folds = {car: k for k, car in enumerate(CARS)}
        for k, car in enumerate(CARS):
            fold_ids = [image_id for image_id in IDS if image_id.startswith(car)]
            oof_score = {"fold": k, "dice": 0.9, "images": 2, "per_image": dict.fromkeys(fold_ids, 0.9)}
            run = fold_dir(self.runs / "exp", k)
            write_json(run / FOLD_SCORE, {"fold": k, "best": 0.9 + k / 100, "epoch": 1})
            write_json(run / OOF_SCORE, oof_score)
            refiner = fold_dir(self.refine, k)
            (refiner / RUN_CONFIG).parent.mkdir(parents=True)
            config = {"fold": k, "n_folds": 2, "data": {"root": str(self.data), "images_dir": "train"}}
            (refiner / RUN_CONFIG).write_text(json.dumps(config))  # JSON is YAML
            write_folds(refiner / FOLDS, folds)
            write_json(refiner / OOF_SCORE, oof_score)
            for image_id in fold_ids:
                write_map(fold_dir(self.source, k) / OOF, image_id, confident(image_id))


COMMANDS: dict[str, Callable[[World], list[object]]] = {
    "ensemble": lambda w: ["ensemble", w.out, w.a, w.b, "--workers", 1],
    "submission": lambda w: [
        "submission", "write", w.a, "--sample", w.sample, "--out", w.out / "submission.csv", "--workers", 1
    ],
    "check": lambda w: [
        "submission", "check", w.submission, "--sample", w.sample, "--height", SHAPE[0], "--width", SHAPE[1]
    ],
    "postprocess": lambda w: ["postprocess", w.a, w.data / MASKS_DIR, "--workers", 1],
    "pseudo": lambda w: ["pseudo", w.a, w.data / "test", w.out, "--workers", 1],
    "report": lambda w: ["report", w.runs, "--no-wandb"],
    "refine": lambda w: ["refine", w.refine, "--sources", w.source],
}  # fmt: skip


def victim_folder(w: World, stage: str) -> Path:
    """Where a stage's bad map goes: the ensemble's second input (the first sets the size), the refiner's
    source, else the stage's one prediction folder."""
    return {"ensemble": w.b, "refine": fold_dir(w.source, 0) / OOF}.get(stage, w.a)


# Each damages the world for a stage and returns what the error line must name.


def missing_map(w: World, stage: str) -> list[str]:
    path = map_path(victim_folder(w, stage), VICTIM)
    path.unlink()
    if stage in ("postprocess", "pseudo"):  # nothing else lists the images: the manifest counts them
        return [str(path.parent / MANIFEST)]
    return [str(path)] if stage == "refine" else [str(path.parent), path.stem]


def truncated_map(w: World, stage: str) -> list[str]:
    path = map_path(victim_folder(w, stage), VICTIM)
    path.write_bytes(path.read_bytes()[:-40])  # a copy cut short
    return [str(path), "truncated"]


def corrupt_map(w: World, stage: str) -> list[str]:
    """A flipped bit inside the zstd frame: the header and length look whole, the read must still tell."""
    path = map_path(victim_folder(w, stage), VICTIM)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 16] ^= 0x10
    path.write_bytes(bytes(data))
    return [str(path), "damaged map"]


def wrong_size_map(w: World, stage: str) -> list[str]:
    path = write_map(victim_folder(w, stage), VICTIM, np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint8))
    return [str(path), "97x64"]


def unparsable_manifest(w: World, stage: str) -> list[str]:
    path = {
        "report": fold_dir(w.runs / "exp", 1) / FOLD_SCORE,
        "refine": fold_dir(w.refine, 1) / OOF_SCORE,
    }.get(stage, victim_folder(w, stage) / MANIFEST)
    path.write_text(path.read_text()[:10])  # cut off mid-write
    return [str(path)]


def record_without_entry(w: World, stage: str) -> list[str]:
    path, entry = {
        "report": (fold_dir(w.runs / "exp", 1) / FOLD_SCORE, "best"),
        "refine": (fold_dir(w.refine, 1) / OOF_SCORE, "per_image"),
    }[stage]
    record = json.loads(path.read_text())
    del record[entry]
    path.write_text(json.dumps(record))
    return [str(path), repr(entry)]


def empty_folder(w: World, stage: str) -> list[str]:
    folder = {"report": w.runs, "refine": w.refine}.get(stage, victim_folder(w, stage))
    shutil.rmtree(folder)
    folder.mkdir()
    return [str(folder)]


def duplicate_sample_row(w: World, stage: str) -> list[str]:
    lines = w.sample.read_text().splitlines(keepends=True)
    w.sample.write_text("".join([*lines[:3], lines[1], *lines[3:]]))
    return [str(w.sample), "row 3", "repeats row 1"]


MAP_READERS = ["ensemble", "submission", "postprocess", "pseudo", "refine"]
FOLDER_READERS = ["ensemble", "submission", "postprocess", "pseudo", "report", "refine"]
BAD: dict[str, tuple[Callable[[World, str], list[str]], list[str]]] = {
    "missing": (missing_map, MAP_READERS),
    "truncated": (truncated_map, MAP_READERS),
    "corrupt": (corrupt_map, MAP_READERS),
    "wrong-size": (wrong_size_map, MAP_READERS),
    "manifest": (unparsable_manifest, FOLDER_READERS),
    "record": (record_without_entry, ["report", "refine"]),
    "empty": (empty_folder, FOLDER_READERS),
    "duplicate-sample": (duplicate_sample_row, ["submission", "check"]),
}
CASES = [
    pytest.param(stage, bad, id=f"{stage}-{bad}") for bad, (_, stages) in BAD.items() for stage in stages
]


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path / "world")


def run(argv: list[object], in_process: bool, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``carvana ARGV``; capfd also sees what C libraries print."""
    args = [str(arg) for arg in argv]
    if in_process:
        status = cli.main(args)
        out, err = capfd.readouterr()
        return status, out, err
    done = subprocess.run(
        [sys.executable, "-m", "carvana", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("stage", COMMANDS)
def test_valid_inputs_pass(world, stage, capfd):
    """The control: undamaged, every stage succeeds, so each failure below is the damage's doing."""
    status, _, err = run(COMMANDS[stage](world), in_process=True, capfd=capfd)
    assert status == 0, err


@pytest.mark.parametrize(("stage", "bad"), CASES)
def test_bad_input_is_one_line_and_leaves_nothing(world, stage, bad, capfd):
    damage, _ = BAD[bad]
    named = damage(world, stage)
    in_process = stage in SLOW_TO_START and bad != SUBPROCESS_CASE
    status, out, err = run(COMMANDS[stage](world), in_process, capfd)
    assert status == 2, err
    assert out == ""
    # progress lines (carvana.progress, on stderr when it is no terminal) may come before the error
    progress = re.compile(r".*: \d+/\d+ \(\d+%\)")
    err = "".join(line for line in err.splitlines(keepends=True) if not progress.match(line))
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in named:
        assert text in err, f"{text!r} not in {err!r}"
    if bad == "corrupt":  # only decoding finds it, in a worker: the maps before it may be written, whole
        assert not (world.out / MANIFEST).exists() and not (world.out / "submission.csv").exists()
    else:
        assert not world.out.exists()
    assert not list(world.runs.glob(f"{CV_REPORT}*"))
    assert not [path for path in world.root.rglob("*") if path.name.endswith(TEMP_SUFFIX)]
