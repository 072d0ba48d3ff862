"""Sweeps end to end in subprocesses, the way a user runs them: the fold grid and its CV table (printed,
written, logged to W&B, and again from ``python -m carvana.report``), real 2-process DDP alone and inside a
multirun, the submitit launcher with a requeued job, and an Optuna search. Tiny synthetic cars, CPU, W&B
offline."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import submitit
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image
from runs import REPO, TINY, train
from submitit.core.utils import DelayedSubmission
from wandb_records import records, run_info, summary

from carvana.predict import oof

# Tiny tensors on a shared 2-core CPU: waiting for a second OpenMP thread costs more than the work.
ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
HEADER = "| experiment | fold0 | fold1 | mean | std | folds | OOF Dice | LB |"


def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python train.py -m`` with the tiny overrides of ``runs.TINY`` and LinkNet-18."""
    paths = [f"paths.output_root={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    command = [sys.executable, "train.py", "-m", *paths, *TINY, "model=linknet18", *overrides]
    environ = {**os.environ, **ENV}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environ, timeout=600)


def best(run: Path) -> float:
    return json.loads((run / "fold_score.json").read_text())["best"]


def oof_score(run: Path) -> dict:
    return json.loads((run / "oof_score.json").read_text())


def wandb_logs(folder: Path) -> list[Path]:
    return sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))


def fold_folders(outputs: Path) -> list[Path]:
    return sorted(path.parent for path in outputs.rglob("fold_score.json"))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Folds 0 and 1 of the 5-fold grid (``+experiment=folds5`` narrowed on the command line), OOF on."""
    tmp = tmp_path_factory.mktemp("grid")
    result = ok(train(tmp, "+experiment=folds5", "fold=0,1", "model=linknet18", env=ENV))
    return tmp / "outputs", result


def test_fold_grid_prints_and_writes_the_cv_table(grid):
    outputs, result = grid
    runs = [outputs / "linknet18" / "fold0", outputs / "linknet18" / "fold1"]
    assert fold_folders(outputs) == runs
    dice = [best(run) for run in runs]
    for run in runs:  # each fold's validation cars predicted at its end, into its own folder
        assert oof_score(run)["images"] == 16 and len(list((run / "oof").glob("*.zst"))) == 16
    pooled = oof.pooled_dice(runs)
    mean, std = np.mean(dice), np.std(dice, ddof=1)
    row = f"| linknet18 | {dice[0]:.5f} | {dice[1]:.5f} | {mean:.5f} | {std:.5f} | 2/5 | {pooled:.5f} |  |"
    table = (outputs / "cv_report.md").read_text()
    assert table.splitlines() == [HEADER, "|---|---:|---:|---:|---:|---:|---:|---|", row]
    assert table in result.stdout  # printed when the multirun ends

    (line,) = csv.DictReader((outputs / "cv_report.csv").open())
    assert [float(line["fold0"]), float(line["fold1"])] == dice
    assert float(line["mean"]) == pytest.approx(mean) and float(line["std"]) == pytest.approx(std)
    assert float(line["oof_dice"]) == pytest.approx(pooled) and line["oof_folds"] == "0 1"
    assert (line["folds"], line["n_folds"], line["lb"]) == ("2", "5", "")
    with Image.open(outputs / "cv_report.png") as chart:
        assert chart.format == "PNG" and chart.width > 200


def test_each_fold_is_a_wandb_run_and_the_cv_run_holds_the_table(grid):
    outputs, _ = grid
    ids = set()
    for k in (0, 1):
        run = outputs / "linknet18" / f"fold{k}"
        (log,) = wandb_logs(run)  # one run per fold: the multirun finished each before the next
        info = run_info(log)
        assert (info.run_group, info.job_type) == ("linknet18", f"fold{k}")
        assert json.loads(summary(log)["oof/dice"]) == pytest.approx(oof_score(run)["dice"])
        ids.add(info.run_id)
    assert len(ids) == 2

    logs = wandb_logs(outputs / "linknet18")
    assert logs and len({run_info(log).run_id for log in logs}) == 1  # reports update one cv run
    info = run_info(logs[0])
    assert (info.run_group, info.job_type, info.display_name) == ("linknet18", "cv", "linknet18-cv")
    values, runs = summary(logs[0]), fold_folders(outputs)
    assert json.loads(values["cv/mean"]) == pytest.approx(np.mean([best(run) for run in runs]))
    assert json.loads(values["cv/oof_dice"]) == pytest.approx(oof.pooled_dice(runs))
    (table,) = logs[0].parent.glob("files/media/table/cv/table_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["fold", "val/dice", "epoch", "oof/dice"]
    assert [row[:2] for row in data["data"]] == [[0, best(runs[0])], [1, best(runs[1])]]


def test_report_command_gives_the_same_table(grid):
    outputs, _ = grid
    table = (outputs / "cv_report.md").read_text()
    environ = {**os.environ, **ENV}
    command = [sys.executable, "-m", "carvana", "report", str(outputs)]
    result = ok(subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environ, timeout=600))
    assert result.stdout.startswith(table) and (outputs / "cv_report.md").read_text() == table
    logs = wandb_logs(outputs / "linknet18")
    assert len(logs) == 2 and len({run_info(log).run_id for log in logs}) == 1

    missing = subprocess.run(
        [sys.executable, "-m", "carvana", "report", str(outputs / "nowhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=environ,
        timeout=600,
    )
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: run folder")


def test_a_failed_fold_finishes_its_wandb_run(tmp_path):
    """A fold stopped by an error closes its W&B run as failed: a multirun's next job never logs into it."""
    result = train(tmp_path, "model=linknet18", f"init_from={tmp_path / 'none.ckpt'}", env=ENV)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith("error: init_from=")
    (log,) = wandb_logs(tmp_path / "outputs" / "linknet18" / "fold0")
    assert [r.exit.exit_code for r in records(log) if r.WhichOneof("record_type") == "exit"] == [1]


def test_ddp_run_is_one_run_of_two_processes(tmp_path):
    result = ok(train(tmp_path, "model=linknet18", "trainer=ddp_cpu", env=ENV))
    assert "distributed_backend=gloo" in result.stderr and "Starting with 2 processes" in result.stderr
    run = tmp_path / "outputs" / "linknet18" / "fold0"
    assert fold_folders(tmp_path / "outputs") == [run]
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran this very job, in this folder
    assert result.stdout.count("best val/dice") == 1  # rank 0 alone reports
    (log,) = wandb_logs(run)  # rank 1 opened no W&B run
    score = oof_score(run)  # OOF on both ranks, written once
    assert score["images"] == 16 and len(list((run / "oof").glob("*.zst"))) == 16
    assert json.loads(summary(log)["oof/dice"]) == pytest.approx(score["dice"])
    assert json.loads(summary(log)["val/dice"])["max"] == pytest.approx(best(run))


@pytest.mark.slow  # ~40 s: two 2-process DDP jobs; one DDP job and the multirun grid run by default
def test_ddp_inside_a_multirun_runs_each_job_once(tmp_path):
    """Lightning's children rerun the command line: they must run their job, not the sweep again."""
    result = ok(sweep(tmp_path, "fold=0,1", "trainer=ddp_cpu", "logger=csv"))
    assert result.stdout.count("Launching 2 jobs") == 1
    assert result.stderr.count("Starting with 2 processes") == 2
    assert re.findall(r"\[HYDRA\] \t#(\d+) : ", result.stdout) == ["0", "1"]  # two jobs, no nested sweep
    outputs = tmp_path / "outputs"
    runs = [outputs / "linknet18" / "fold0", outputs / "linknet18" / "fold1"]
    assert fold_folders(outputs) == runs
    for run in runs:
        assert (run / "train_ddp_process_1.log").is_file()
        (metrics,) = run.glob("csv/version_*/metrics.csv")  # one metrics file: rank 0's
        dice = [float(row["val/dice"]) for row in csv.DictReader(metrics.open()) if row.get("val/dice")]
        assert dice == [pytest.approx(best(run))] and oof_score(run)["images"] == 16
    assert result.stdout.count(HEADER) == 1


def test_submitit_launcher_runs_the_jobs_and_a_requeued_job_resumes(tmp_path, monkeypatch):
    result = ok(sweep(tmp_path, "hydra/launcher=submitit_local", "fold=0,1", "oof=false"))
    outputs = tmp_path / "outputs"
    jobs = sorted((outputs / ".submitit").glob("*/*_result.pkl"))
    assert len(jobs) == 2 and len({job.parent for job in jobs}) == 2  # two jobs, two processes
    run = outputs / "linknet18" / "fold1"
    assert fold_folders(outputs) == [outputs / "linknet18" / "fold0", run]
    assert result.stdout.count("| linknet18 |") == 1
    before = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    # What submitit dumps when a job is pre-empted or times out, and what the requeued job then runs.
    submitted = [DelayedSubmission.load(path) for path in (outputs / ".submitit").glob("*/*_submitted.pkl")]
    (delayed,) = [job for job in submitted if "fold=1" in job.args[0]]
    requeued = delayed.function.checkpoint(*delayed.args, **delayed.kwargs)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    executor = submitit.AutoExecutor(folder=tmp_path / "requeue", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(requeued.function, *requeued.args, **requeued.kwargs)
    assert job.result().return_value == pytest.approx(best(run))  # the same fold, its objective
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in job.stdout()
    after = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (after["epoch"], after["global_step"]) == (before["epoch"], before["global_step"])
    logs = wandb_logs(run)
    assert len(logs) == 2 and len({run_info(log).run_id for log in logs}) == 1  # the same W&B run


def test_optuna_search_runs_two_trials(tmp_path):
    result = ok(train(tmp_path, "+experiment=optuna_lr_loss", "hydra.sweeper.n_trials=2", "model=linknet18",
                      "logger=none", "oof=false", env=ENV))  # fmt: skip
    outputs = tmp_path / "outputs"
    runs = fold_folders(outputs)
    assert runs == [outputs / "optuna_lr_loss" / f"trial{k}" / "fold0" for k in (0, 1)]
    configs = [OmegaConf.load(run / ".hydra" / "config.yaml") for run in runs]
    trials = {(config.optimizer.lr, config.loss.bce_weight) for config in configs}
    assert len(trials) == 2 and all(1e-5 <= lr <= 3e-3 and 0 <= bce <= 1 for lr, bce in trials)
    results = yaml.safe_load((outputs / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(best(run) for run in runs))  # objective: best val/dice
    assert set(results["best_params"]) == {"optimizer.lr", "loss.bce_weight"}
    assert result.stdout.count("| optuna_lr_loss/trial") == 2  # the CV table, a row per trial
