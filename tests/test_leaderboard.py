"""``carvana lb``: a Kaggle score recorded beside the experiment whose checkpoints made the submission, and
shown in the CV table's LB column."""

import subprocess
import sys
from pathlib import Path

from carvana.evaluate import cv_report, leaderboard
from carvana.runs import FOLD_SCORE, LEADERBOARD, MANIFEST, SUBMISSION, checkpoint, read_json, write_json

REPO = Path(__file__).resolve().parents[1]


def experiment(outputs: Path, name: str, dices: list[float]) -> Path:
    """Finished folds as the CV report reads them: ``fold<k>/fold_score.json``."""
    for fold, dice in enumerate(dices):
        write_json(outputs / name / f"fold{fold}" / FOLD_SCORE, {"fold": fold, "best": dice, "epoch": 3})
    return outputs / name


def submission(folder: Path, *experiments: Path) -> Path:
    """A prediction folder's submission, its manifest naming best.ckpt of fold 0 of each experiment."""
    write_json(
        folder / MANIFEST,
        {"stage": "predict", "checkpoints": [str(checkpoint(e / "fold0")) for e in experiments]},
    )
    (folder / SUBMISSION).write_text("img,rle_mask\na_01.jpg,1 1\n")
    return folder / SUBMISSION


def lb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carvana", "lb", *args], cwd=REPO, capture_output=True, text=True
    )


def test_a_recorded_score_lands_in_the_experiment_and_the_cv_table(tmp_path):
    outputs = tmp_path / "outputs"
    linknet, unet = (
        experiment(outputs, "linknet34", [0.991, 0.992]),
        experiment(outputs, "unet", [0.990, 0.990]),
    )
    path = submission(tmp_path / "predictions" / "linknet34", linknet)

    done = lb(str(path), "0.99702")
    assert done.returncode == 0, done.stderr
    assert "linknet34: public LB 0.99702" in done.stdout
    assert leaderboard.record(path, 0.99711, board="private").startswith("linknet34: private LB 0.99711")
    recorded = read_json(linknet / LEADERBOARD)["scores"]
    assert [entry["score"] for entry in recorded] == [0.99702, 0.99711]
    assert recorded[0]["submission"] == str(path.resolve()) and len(recorded[0]["sha256"]) == 64

    table = {e.name: e for e in cv_report.experiments(outputs)}
    assert table["linknet34"].lb == 0.99711 and table["unet"].lb is None
    row = next(line for line in cv_report.markdown(list(table.values())).splitlines() if "linknet34" in line)
    assert row.rstrip(" |").endswith("0.99711")
    assert not (unet / LEADERBOARD).exists()


def test_an_ensemble_of_experiments_needs_its_row_named(tmp_path):
    outputs = tmp_path / "outputs"
    linknet, unet = experiment(outputs, "linknet34", [0.991]), experiment(outputs, "unet", [0.990])
    path = submission(tmp_path / "blend", linknet, unet)
    done = lb(str(path), "0.9972")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.startswith(f"error: {path}: made by the checkpoints of 2 experiments")
        and "--experiment" in done.stderr
    )
    assert not (linknet / LEADERBOARD).exists() and not (unet / LEADERBOARD).exists()

    done = lb(str(path), "0.9972", "--experiment", str(linknet))
    assert done.returncode == 0, done.stderr
    assert read_json(linknet / LEADERBOARD)["scores"][0]["score"] == 0.9972


def test_a_score_outside_0_1_is_one_line(tmp_path):
    path = submission(tmp_path / "p", experiment(tmp_path / "outputs", "x", [0.99]))
    done = lb(str(path), "99.7")
    assert done.returncode == 2 and done.stderr.strip() == "error: score must be in [0, 1], got 99.7"
