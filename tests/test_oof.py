"""Out-of-fold maps and scores of a real train.py run, checked against a direct numpy Dice of the files."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from carvana.errors import CarvanaError
from carvana.predict import oof
from carvana.runs import read_map

TRAINER = {"accelerator": "cpu", "devices": 1, "num_workers": 0, "enable_progress_bar": False}


def numpy_dice(path: Path, gif: Path) -> float:
    pred = read_map(path) >= 128
    truth = np.array(Image.open(gif)) > 0
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * (pred & truth).sum() / total


def direct_scores(run: Path) -> dict[str, float]:
    """Per-image Dice of every file in <run>/oof against the masks of the run's (synthetic) data."""
    masks = Path(OmegaConf.load(run / ".hydra" / "config.yaml").paths.cache_dir) / "synthetic" / "train_masks"
    return {p.stem: numpy_dice(p, masks / f"{p.stem}_mask.gif") for p in (run / "oof").glob("*.zst")}


@pytest.fixture()
def runs(trained_run, tmp_path) -> list[Path]:
    """Two run folders of the trained checkpoint: its own fold 0, and a copy set to validate on fold 1."""
    outputs = tmp_path / "outputs" / "quickstart"
    folds = []
    for fold in (0, 1):
        run = outputs / f"fold{fold}"
        shutil.copytree(trained_run, run)
        config = OmegaConf.load(run / ".hydra" / "config.yaml")
        config.fold = fold
        OmegaConf.save(config, run / ".hydra" / "config.yaml")
        folds.append(run)
    return folds


def test_fold_score_equals_numpy_dice_of_the_oof_files(runs, trained_run):
    run = runs[0]
    score = oof.predict_oof(run, **TRAINER)
    direct = direct_scores(run)
    assert len(direct) == 16 and all(
        image_id.startswith(oof.validation_samples(run)[0].car) for image_id in direct
    )
    assert score == pytest.approx(np.mean(list(direct.values())), abs=1e-12)
    record = json.loads((run / "oof_score.json").read_text())
    assert record["dice"] == score and record["fold"] == 0 and record["images"] == 16
    assert record["per_image"] == pytest.approx(direct, abs=1e-12)
    manifest = json.loads((run / "oof" / "manifest.json").read_text())
    assert manifest["stage"] == "oof" and manifest["tta"] == {"hflip": True} and manifest["images"] == 16

    # Without TTA the OOF maps are the validation pass at the original resolution: the fold's val/dice.
    plain = oof.predict_oof(run, hflip=False, **TRAINER)
    best = json.loads((trained_run / "fold_score.json").read_text())["best"]
    assert plain == pytest.approx(best, abs=2e-4)


def test_pooled_dice_is_the_mean_over_all_oof_files(runs):
    for run in runs:
        oof.predict_oof(run, hflip=False, **TRAINER)
    direct = {**direct_scores(runs[0]), **direct_scores(runs[1])}
    assert len(direct) == 32  # two disjoint folds of 16 images
    assert oof.pooled_dice(runs) == pytest.approx(np.mean(list(direct.values())), abs=1e-12)
    with pytest.raises(CarvanaError, match="out-of-fold in both"):
        oof.pooled_dice([runs[0], runs[0]])


def test_oof_maps_older_than_the_checkpoint_are_predicted_again(runs):
    run = runs[0]
    oof.predict_oof(run, hflip=False, **TRAINER)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "oof").glob("*.zst")}
    oof.predict_oof(run, hflip=False, **TRAINER)  # nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in (run / "oof").glob("*.zst")} == before
    checkpoint = run / "checkpoints" / "best.ckpt"
    later = max(before.values()) / 1e9 + 10
    os.utime(checkpoint, (later, later))  # a newer best checkpoint, as after resumed training
    oof.predict_oof(run, hflip=False, **TRAINER)
    after = {p.name: p.stat().st_mtime_ns for p in (run / "oof").glob("*.zst")}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in before)
