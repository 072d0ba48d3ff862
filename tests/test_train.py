"""`python train.py` end to end in a subprocess: real Hydra composition and Trainer, files on disk, W&B."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from runs import train
from wandb_records import records, run_info, summary

from carvana.data.kaggle import train_samples

# A W&B API key in the environment, as on a user's machine: no file the run writes may hold it.
SECRET = "5f3c9e0a7b1d2c4e6f8a0b1c3d5e7f9a1b3c5d7e"


def wandb_logs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def fold2(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp_path = tmp_path_factory.mktemp("fold2")
    result = train(tmp_path, "model=linknet34", "fold=2", env={"WANDB_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "outputs" / "linknet34" / "fold2", result


def test_no_file_of_the_run_holds_the_wandb_key(fold2):
    run_dir, result = fold2
    files = [path for path in run_dir.parent.rglob("*") if path.is_file()]
    assert any(path.suffix == ".wandb" for path in files) and any(path.name == "train.log" for path in files)
    assert [path for path in files if SECRET.encode() in path.read_bytes()] == []
    assert SECRET not in result.stdout + result.stderr


def test_one_fold_writes_the_run_folder(fold2):
    run_dir, result = fold2
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "folds.csv", "fold_score.json"):
        assert (run_dir / name).is_file(), name
        assert str(run_dir / name) in result.stdout  # the run tells the user where everything is
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["fold"] == 2 and config["model"]["encoder_name"] == "resnet34"

    with open(run_dir / "folds.csv") as f:
        table = {row["car"]: int(row["fold"]) for row in csv.DictReader(f)}
    cars = {s.car for s in train_samples(run_dir.parents[2] / "cache" / "synthetic")}
    assert set(table) == cars and sorted(table.values()) == [0, 1, 2, 3, 4]

    score = json.loads((run_dir / "fold_score.json").read_text())
    assert score["fold"] == 2 and score["monitor"] == "val/dice" and 0.0 < score["best"] <= 1.0


def test_wandb_run_holds_the_fold_and_its_score(fold2):
    run_dir, result = fold2
    (log,) = wandb_logs(run_dir)
    assert str(log.parent) in result.stdout
    info = run_info(log)
    assert (info.project, info.run_group, info.job_type, info.display_name) == (
        "carvana",
        "linknet34",
        "fold2",
        "linknet34-fold2",
    )
    assert info.run_id == (run_dir / "wandb_id").read_text().strip()
    best = json.loads((run_dir / "fold_score.json").read_text())["best"]
    assert json.loads(summary(log)["val/dice"]) == {"max": pytest.approx(best)}
    config = {
        item.key: json.loads(item.value_json)
        for r in records(log)
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["fold"] == 2 and config["model"]["encoder_name"] == "resnet34"
    masks = list(log.parent.glob("files/media/images/mask/val/*.png"))
    assert len(masks) == 2 * 4  # prediction and ground truth for 4 validation images


def test_same_command_resumes_from_last_checkpoint(fold2, tmp_path):
    run_dir, _ = fold2
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    copy = tmp_path / "outputs" / "linknet34" / "fold2"
    shutil.copytree(run_dir, copy)
    shutil.copytree(run_dir.parents[2] / "cache", tmp_path / "cache")

    result = train(tmp_path, "model=linknet34", "fold=2", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {copy / 'checkpoints' / 'last.ckpt'}" in result.stdout + result.stderr
    second = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == 2 * first["global_step"]
    logs = wandb_logs(copy)
    assert len(logs) == 2 and run_info(logs[0]).run_id == run_info(logs[1]).run_id


def test_crop_training_with_csv_logger(tmp_path):
    result = train(
        tmp_path, "model=unet_resnet34", "logger=csv", "data.geometry.mode=crop", "data.geometry.crop=[32,64]"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "unet_resnet34" / "fold0"
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    dice = [float(r["val/dice"]) for r in rows if r.get("val/dice")]
    assert len(dice) == 1 and dice[0] == pytest.approx(
        json.loads((run_dir / "fold_score.json").read_text())["best"]
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_offline_pretrained_weights_fail_with_one_line(tmp_path):
    result = train(tmp_path, "model.encoder_weights=imagenet", env={"HF_HUB_OFFLINE": "1"})
    line = one_error_line(result)
    assert "model.encoder_weights=imagenet" in line and "model.encoder_weights=null" in line


def test_image_without_mask_fails_with_one_line(tmp_path, shared_full):
    root = tmp_path / "kaggle"
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    samples = train_samples(shared_full)[:6]
    for sample in samples:
        shutil.copy(sample.image, root / "train")
        shutil.copy(sample.mask, root / "train_masks")
    (root / "train_masks" / samples[3].mask.name).unlink()
    line = one_error_line(train(tmp_path, f"data.root={root}"))
    assert f"{samples[3].image_id}.jpg: no mask" in line


def test_missing_data_root_fails_with_one_line(tmp_path):
    line = one_error_line(train(tmp_path, f"data.root={tmp_path / 'nowhere'}"))
    assert str(tmp_path / "nowhere" / "train") in line
