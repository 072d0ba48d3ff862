"""carvana status on real folders: a finished fold (train.py), a fold whose train.py was SIGKILLed after its
3rd step, three folds its n_folds counts that never started, predict.py SIGKILLed after its 3rd map (a copy of
it kept half-done, the original resumed to the end), an ensemble, a submission edited after its check; and
the heartbeat rule on hand-written heartbeats of a live and of a silent process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kill_switch
import pytest
from omegaconf import OmegaConf

from carvana import runs
from carvana.evaluate import status

REPO = Path(__file__).resolve().parents[1]
STEP = "carvana.train.segmentation_module:SegmentationModule.training_step"
STEPS = 8  # fold 1 of 5 of 5 synthetic cars: 4 training cars x 16 angles, batch 8
IMAGES = 16  # 1 test car x 16 angles


def carvana(*args: str) -> subprocess.CompletedProcess:
    """The ``carvana`` command as a user runs it."""
    command = [sys.executable, "-m", "carvana", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=kill_switch.ENV, timeout=300)


@pytest.fixture(scope="module")
def folders(trained_run: Path, tmp_path_factory) -> dict[str, Path]:
    """outputs/quickstart/fold0 finished (the session's train.py run, then carvana oof), fold1 killed,
    folds 2-4 missing (n_folds=5); predictions/ partial (killed), done (resumed), edited, blend."""
    root = tmp_path_factory.mktemp("status")
    outputs, predictions = root / "outputs", root / "predictions"
    fold0 = outputs / "quickstart" / "fold0"
    shutil.copytree(trained_run, fold0)
    oof = carvana("oof", str(fold0), "--num-workers", "0")
    assert oof.returncode == 0, oof.stderr[-3000:]

    overrides = [str(o) for o in OmegaConf.load(trained_run / ".hydra" / "overrides.yaml")]
    overrides = [o for o in overrides if not o.startswith(("paths.output_root=", "fold="))]
    killed = kill_switch.run(
        [
            "train.py",
            *overrides,
            f"paths.output_root={outputs}",
            "fold=1",
            "callbacks.heartbeat.every_seconds=0",
        ],
        (STEP, 3, "KILL"),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    done = predictions / "done"
    predict = [
        "predict.py", f"checkpoints={runs.checkpoint(fold0)}", f"out_dir={done}", "trainer=cpu",
        "data.batch_size=1", "data.num_workers=0", "writer_threads=1", "workers=1",
    ]  # fmt: skip
    cut = kill_switch.run(predict, ("carvana.runs:write_map", 3, "KILL"))
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-3000:]
    shutil.copytree(done, predictions / "partial")
    resumed = kill_switch.run(predict)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    shutil.copytree(done, predictions / "edited")
    edited = predictions / "edited" / runs.SUBMISSION
    edited.write_text("".join(edited.read_text().splitlines(keepends=True)[:-1]))  # its last row gone
    blend = carvana("ensemble", str(predictions / "blend"), str(done), "--workers", "1")
    assert blend.returncode == 0, blend.stderr[-3000:]
    return {"outputs": outputs, "predictions": predictions, "fold0": fold0, "fold1": fold0.parent / "fold1"}


def test_the_heartbeat_records_a_finished_fit_and_a_killed_one(folders):
    finished, killed = runs.read_heartbeat(folders["fold0"]), runs.read_heartbeat(folders["fold1"])
    assert finished["state"] == "finished" and finished["stage"] == "fit"
    assert (finished["epochs_done"], finished["max_epochs"], finished["step"]) == (
        1,
        1,
        finished["total_steps"],
    )
    assert finished["steps_per_second"] > 0
    assert killed["state"] == "running"  # a SIGKILL leaves its last beat: after step 2 of 8
    assert (killed["step"], killed["total_steps"], killed["epochs_done"]) == (2, STEPS, 0)
    assert runs.process_gone(killed) and not runs.process_gone(runs.this_process())
    partial = runs.read_heartbeat(folders["predictions"] / "partial")
    assert (partial["stage"], partial["state"], partial["images"]) == ("predict", "running", IMAGES)
    assert partial["checkpoints"] == [str(runs.checkpoint(folders["fold0"]))]


def test_the_board_as_a_table(folders):
    shown = carvana("status", str(folders["outputs"]), str(folders["predictions"]))
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.splitlines()
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in lines if line.startswith("quickstart")}
    assert rows[("quickstart", "0", "done")][0] == "1/1"
    assert rows[("quickstart", "1", "interrupted")][0] == "0/1"
    killed = next(line for line in lines if line.startswith("quickstart  1"))
    assert killed.endswith("is gone") and "killed: process" in killed
    assert [key for key in rows if key[2] == "missing"] == [
        ("quickstart", str(k), "missing") for k in (2, 3, 4)
    ]
    table = {line.split()[0]: line.split() for line in lines if line.strip()}
    assert table["partial"][1:5] == ["predict", "interrupted", f"3/{IMAGES}", "quickstart"]
    assert table["done"][1:5] == ["predict", "done", f"{IMAGES}/{IMAGES}", "quickstart"]
    assert table["blend"][1:6] == ["ensemble", "done", f"{IMAGES}/{IMAGES}", "ensemble", "of"]
    assert table["done/submission.csv"][1:] == [str(IMAGES), "yes"]
    assert table["edited/submission.csv"][1:4] == [str(IMAGES - 1), "NO", f"{runs.SUBMISSION}:"]


def test_the_board_as_json(folders):
    shown = carvana("status", str(folders["outputs"]), str(folders["predictions"]), "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    board = json.loads(shown.stdout)
    folds = {fold["fold"]: fold for fold in board["folds"]}
    assert [folds[k]["state"] for k in range(5)] == ["done", "interrupted", "missing", "missing", "missing"]
    done, killed = folds[0], folds[1]
    score = runs.read_json(folders["fold0"] / runs.FOLD_SCORE)["best"]
    oof = runs.read_json(folders["fold0"] / runs.OOF_SCORE)["dice"]
    assert (done["val_dice"], done["oof_dice"], done["epochs_done"], done["max_epochs"]) == (score, oof, 1, 1)
    assert 0 <= done["checkpoint_age_s"] < 3600 and done["eta_s"] is None
    assert (killed["epochs_done"], killed["val_dice"], killed["checkpoint_age_s"]) == (0, None, None)
    assert killed["run"] == str(folders["fold1"]) and killed["note"].startswith("killed: process")
    predictions = {p["folder"]: p for p in board["prediction_folders"]}
    assert sorted(predictions) == ["blend", "done", "edited", "partial"]
    partial = predictions["partial"]
    assert (partial["state"], partial["images_done"], partial["images"]) == ("interrupted", 3, IMAGES)
    assert partial["checkpoints"] == [str(runs.checkpoint(folders["fold0"]))]
    assert predictions["blend"]["stage"] == "ensemble"
    assert predictions["blend"]["inputs"] == [str(folders["predictions"].resolve() / "done")]
    submissions = {s["path"]: s for s in board["submissions"]}
    assert submissions["done/submission.csv"] == {
        "path": "done/submission.csv", "rows": IMAGES, "validated": True, "note": ""
    }  # fmt: skip
    edited = submissions["edited/submission.csv"]
    assert (edited["rows"], edited["validated"]) == (IMAGES - 1, False)
    assert f"{IMAGES - 1} rows" in edited["note"]


def beat(folder: Path, **entries) -> None:
    """A heartbeat as the callback writes one, of this (live) process, ``entries`` changed."""
    record = {
        "stage": "fit", "state": "running", **runs.this_process(), "time": time.time(), "every_seconds": 30.0,
        "step": 40, "total_steps": 100, "steps_per_second": 2.0, "epochs_done": 1, "max_epochs": 4,
    }  # fmt: skip
    runs.write_json(folder / runs.HEARTBEAT, {**record, **entries})


def test_a_live_heartbeat_is_running_with_its_eta_and_a_silent_one_is_interrupted(tmp_path):
    live, silent = runs.fold_dir(tmp_path / "x", 0), runs.fold_dir(tmp_path / "x", 1)
    beat(live)
    beat(silent, host="another-host", time=time.time() - 10 * 60)
    assert status.main([str(tmp_path), str(tmp_path / "none"), "--json"]) == 0
    board = status.board(tmp_path, tmp_path / "none")
    running, stale = board.folds
    assert (running.state, running.epochs_done, running.max_epochs) == ("running", 1, 4)
    assert 25 < running.eta_s <= 30  # 60 steps left at 2 a second, from the beat's time
    assert (stale.state, stale.note) == ("interrupted", "killed: no heartbeat for 10m00s")
    os.utime(silent / runs.HEARTBEAT)  # its file's age is not the rule: the time inside it is
    assert status.board(tmp_path, tmp_path / "none").folds[1].state == "interrupted"
    beat(silent, time=time.time() - 60, every_seconds=0.0)  # younger than the 2-minute floor
    assert status.board(tmp_path, tmp_path / "none").folds[1].state == "running"


def test_a_fold_from_before_heartbeats_is_judged_by_its_files(tmp_path):
    scored, silent = runs.fold_dir(tmp_path / "old", 0), runs.fold_dir(tmp_path / "old", 1)
    runs.write_json(scored / runs.FOLD_SCORE, {"fold": 0, "monitor": "val/dice", "best": 0.9, "epoch": 3})
    runs.write_json(scored / runs.OOF_SCORE, {"dice": 0.91})
    runs.write_json(silent / runs.FOLD_SCORE, {"fold": 1, "monitor": "val/dice", "best": 0.8, "epoch": 0})
    hours_ago = time.time() - 2 * 3600
    os.utime(silent / runs.FOLD_SCORE, (hours_ago, hours_ago))
    fresh = runs.fold_dir(tmp_path / "old", 2)
    fresh.mkdir()
    (fresh / "train.log").write_text("")
    folds = status.board(tmp_path, tmp_path / "none").folds
    assert [(f.state, f.note) for f in folds] == [
        ("done", "no heartbeat; scored after its last checkpoint"),
        ("done", f"no heartbeat; judged by its {runs.FOLD_SCORE}"),
        ("running", "no heartbeat; a file written 0s ago"),
    ]


def test_bad_input_is_one_line(tmp_path):
    done = carvana("status", str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: neither {tmp_path / 'a'} nor {tmp_path / 'b'} exists: nothing to show"
    ]
