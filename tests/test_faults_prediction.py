"""Prediction killed and rerun costs nothing: predict.py, the out-of-fold pass and the submission writer,
each SIGKILLed at a seeded exact point and then run again, end with the files of a run never interrupted,
byte for byte, and no map is predicted twice.

Faults land through ``tests/kill_switch.py``: after the N-th map written whole (one writer thread, so maps
are written in order, one at a time), or once the N-th submission row is encoded (one encoding process).
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
from pathlib import Path

import kill_switch
import pytest

from carvana.files import temp_files
from carvana.runs import MANIFEST, OOF, OOF_SCORE, SUBMISSION, read_map

WRITE_MAP = "carvana.runs:write_map"
ENCODE_ROW = "carvana.submit.submission:_encode_map"
IMAGES = 16  # trained_run's test images, and its fold's validation images
RNG = random.Random(12)  # the kill points: seeded, drawn at import so that any selection of tests gets them
MAPS_BEFORE_KILL, OOF_MAPS_BEFORE_KILL = RNG.randrange(1, IMAGES), RNG.randrange(1, IMAGES)
ROW_AT_KILL = RNG.randrange(1, IMAGES + 1)


def command(*args: str, fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """A command as a user runs it; ``fault`` = (MODULE:QUALNAME, N) SIGKILLs it after that call's N-th."""
    return kill_switch.run(list(args), (*fault, "KILL") if fault else None, timeout=300)


def predict_py(
    run: Path, out: Path, *extra: str, fault: tuple[str, int] | None = None
) -> subprocess.CompletedProcess:
    """predict.py of ``run``'s best checkpoint into ``out``, then its submission (both in exact order)."""
    return command(
        "predict.py", f"checkpoints={run}/checkpoints/best.ckpt", f"out_dir={out}", "trainer=cpu",
        "data.num_workers=0", "writer_threads=1", "workers=1", *extra, fault=fault,
    )  # fmt: skip


def oof_pass(run: Path, fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """``carvana oof RUN`` on the CPU, maps written in order."""
    return command(
        "-m", "carvana", "oof", str(run), "--accelerator", "cpu", "--num-workers", "0",
        "--writer-threads", "1", fault=fault,
    )  # fmt: skip


def succeeded(done: subprocess.CompletedProcess) -> str:
    """The command's log, once it exited 0."""
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def assert_killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, f"not killed (rc {done.returncode}): {done.stderr[-3000:]}"


def maps(folder: Path) -> dict[str, int]:
    """The maps of a folder: name -> mtime_ns, which changes if a map is written again."""
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.zst")}


def assert_same_maps(folder: Path, reference: Path) -> None:
    """Every map decodes, and the folder holds exactly the reference's maps, byte for byte."""
    names = sorted(maps(reference))
    assert sorted(maps(folder)) == names and len(names) == IMAGES
    for name in names:
        read_map(folder / name)  # a whole map, its checksum checked
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs"


@pytest.fixture(scope="module")
def reference(trained_run, tmp_path_factory) -> Path:
    """The prediction folder of a predict.py run never interrupted: what every interrupted one must become."""
    out = tmp_path_factory.mktemp("reference") / "pred"
    succeeded(predict_py(trained_run, out))
    return out


def test_predict_killed_after_n_maps_then_rerun_gives_the_uninterrupted_files(
    trained_run, reference, tmp_path
):
    n, out = MAPS_BEFORE_KILL, tmp_path / "pred"
    assert_killed(predict_py(trained_run, out, fault=(WRITE_MAP, n)))
    killed = maps(out)
    assert len(killed) == n, f"killed after {n} maps, {len(killed)} there"
    assert not (out / MANIFEST).exists() and not (out / SUBMISSION).exists() and not temp_files(out)
    # What a write killed half-way leaves (another writer thread's, with writer_threads > 1): a part of the
    # map under a temporary name, which the rerun must neither take for a map nor leave behind.
    todo = sorted(set(maps(reference)) - set(killed))
    part = out / f".{todo[0]}.0badc0de.tmp"
    part.write_bytes((reference / todo[0]).read_bytes()[:1000])
    assert temp_files(out) == [part]  # named as carvana.files names them

    log = succeeded(predict_py(trained_run, out, "hydra.verbose=carvana.predict.map_writer"))
    assert f"{out}: {IMAGES - n} of {IMAGES} images to predict" in log
    assert sorted(f"{image_id}.zst" for image_id in re.findall(r"rank 0 wrote (\S+)", log)) == todo
    assert {name: mtime for name, mtime in maps(out).items() if name in killed} == killed
    assert not temp_files(out)
    assert_same_maps(out, reference)
    for name in (MANIFEST, SUBMISSION):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs"


def test_oof_pass_killed_after_n_maps_then_rerun_gives_the_uninterrupted_files(trained_run, tmp_path):
    whole, resumed = tmp_path / "whole" / "fold0", tmp_path / "resumed" / "fold0"
    for run in (whole, resumed):
        shutil.copytree(trained_run, run)
    succeeded(oof_pass(whole))

    n = OOF_MAPS_BEFORE_KILL
    assert_killed(oof_pass(resumed, fault=(WRITE_MAP, n)))
    killed = maps(resumed / OOF)
    assert len(killed) == n, f"killed after {n} maps, {len(killed)} there"
    assert not (resumed / OOF_SCORE).exists() and not (resumed / OOF / MANIFEST).exists()

    log = succeeded(oof_pass(resumed))
    assert f"{resumed / OOF}: {IMAGES - n} of {IMAGES} images to predict" in log
    assert {name: mtime for name, mtime in maps(resumed / OOF).items() if name in killed} == killed
    assert not temp_files(resumed / OOF)
    assert_same_maps(resumed / OOF, whole / OOF)
    assert (resumed / OOF_SCORE).read_bytes() == (whole / OOF_SCORE).read_bytes()


def test_submission_killed_mid_write_leaves_no_submission_and_the_rerun_writes_it_whole(
    trained_run, reference, tmp_path
):
    out = tmp_path / "pred"
    assert_killed(predict_py(trained_run, out, fault=(ENCODE_ROW, ROW_AT_KILL)))
    assert len(maps(out)) == IMAGES and (out / MANIFEST).is_file()  # the maps were done
    assert not (out / SUBMISSION).exists()
    (part,) = temp_files(out, SUBMISSION)  # the killed writer's rows, under a temporary name
    assert (reference / SUBMISSION).read_bytes().startswith(part.read_bytes())
    done = maps(out)

    log = succeeded(predict_py(trained_run, out))
    assert f"{out}: 0 of {IMAGES} images to predict" in log
    assert maps(out) == done
    assert (out / SUBMISSION).read_bytes() == (reference / SUBMISSION).read_bytes()
    assert not temp_files(out)
