"""The status board: every fold of every experiment, every prediction folder and submission, in one table.

    carvana status                        # outputs/ and predictions/; or: carvana status OUTPUTS PREDICTIONS
    carvana status --watch 10             # refreshed every 10 s until Ctrl-C
    carvana status --json                 # for scripts (with --watch: one object per line)

It reads the folders alone (``carvana.runs``; no W&B). A fold is ``done`` when its heartbeat says training
finished (or its epochs reached max_epochs); ``running`` while its heartbeat is younger than
max(4 heartbeat intervals, 2 minutes) and its process, if it ran on this machine, is alive; ``interrupted``
otherwise (killed, or stopped by an error or a signal: the note says which); ``missing`` when the
experiment's n_folds counts it and it has no folder. A fold trained before heartbeats existed is judged by
its files: running while one of them is younger than checkpoint.every_minutes + 10 minutes (a timed
checkpoint lands that often), then done with a fold_score.json, else interrupted. A prediction folder is done
once its manifest exists, else running or interrupted by predict.py's heartbeat (an ensemble on its way, which
has none, by its newest map's age). A submission is checked row by row against the sample submission beside
the test images its maps came from (about 12 s for a full 100,064-row file; once per version of the file
under --watch; --no-check only counts its rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from carvana import runs
from carvana.config import load_run_config
from carvana.data.kaggle import SAMPLE_SUBMISSION
from carvana.errors import CarvanaError, run_command
from carvana.progress import duration
from carvana.submit import submission

STALE_BEATS = 4  # a heartbeat this many intervals old has stopped...
STALE_FLOOR = 120.0  # ...and one younger than this many seconds has not: a checkpoint save, a slow batch
LEGACY_SLACK = (
    600.0  # seconds beyond checkpoint.every_minutes: a fold without a heartbeat, judged by its files
)
SUBMISSIONS = (runs.SUBMISSION, runs.SUBMISSION + ".gz")


@dataclass
class FoldStatus:
    """One fold of an experiment; ages and the ETA in seconds, None where unknown."""

    experiment: str
    fold: int
    state: str  # done, running, interrupted, missing
    run: str | None = None
    note: str = ""
    epochs_done: int | None = None
    max_epochs: int | None = None
    val_dice: float | None = None
    best_epoch: int | None = None
    oof_dice: float | None = None
    checkpoint_age_s: float | None = None
    heartbeat_age_s: float | None = None
    eta_s: float | None = None


@dataclass
class PredictionStatus:
    """One prediction folder, predict.py's (``stage`` predict) or an ensemble; ``images`` None if unknown."""

    folder: str
    stage: str | None
    state: str  # done, running, interrupted
    images_done: int
    images: int | None
    checkpoints: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    note: str = ""
    eta_s: float | None = None


@dataclass
class SubmissionStatus:
    """A submission file in a prediction folder; ``validated`` None when it was not checked."""

    path: str
    rows: int
    validated: bool | None
    note: str = ""


@dataclass
class Board:
    """Everything the board shows, as of ``time`` (POSIX seconds)."""

    time: float
    outputs: str
    predictions: str
    folds: list[FoldStatus]
    prediction_folders: list[PredictionStatus]
    submissions: list[SubmissionStatus]


# Heartbeats.


def stale_after(beat: Mapping[str, Any]) -> float:
    """Seconds after which a heartbeat that still says "running" means its process stopped."""
    return max(STALE_BEATS * float(beat["every_seconds"]), STALE_FLOOR)


def pulse(beat: Mapping[str, Any], now: float) -> tuple[str, str]:
    """(state, note) of the process behind a heartbeat: done, running or interrupted."""
    if beat["state"] == "finished":
        return "done", ""
    if beat["state"] == "stopped":
        return "interrupted", f"stopped: {beat.get('error', 'no reason recorded')}"
    if runs.process_gone(beat):
        return "interrupted", f"killed: process {beat['pid']} on {beat['host']} is gone"
    age = now - float(beat["time"])
    if age > stale_after(beat):
        return "interrupted", f"killed: no heartbeat for {duration(age)}"
    return "running", ""


def eta(beat: Mapping[str, Any], now: float) -> float | None:
    """Seconds left at the heartbeat's step rate, counted from now; None before its first steps."""
    rate, total = beat["steps_per_second"], beat["total_steps"]
    if not rate or total is None:
        return None
    return max((total - beat["step"]) / rate - (now - float(beat["time"])), 0.0)


# Folds.


def _select(config: DictConfig | None, key: str) -> Any:
    if config is None:
        return None
    return OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)


def _json(path: Path) -> runs.Record | None:
    return runs.read_json(path) if path.is_file() else None


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.is_file() else None


def _newest(folders: list[Path]) -> float | None:
    """The newest modification time of the files directly in ``folders``."""
    times = [
        entry.stat().st_mtime
        for folder in folders
        if folder.is_dir()
        for entry in os.scandir(folder)
        if entry.is_file()
    ]
    return max(times, default=None)


def _by_files(run: Path, config: DictConfig | None, has_score: bool, now: float) -> tuple[str, str]:
    """(state, note) of a fold without a heartbeat, from its files' ages: the OOF pass scores the fold after
    its training, so an ``oof_score.json`` newer than its checkpoints means done."""
    scored, saved = _mtime(run / runs.OOF_SCORE), _mtime(runs.checkpoint(run, runs.LAST))
    if scored is not None and scored >= (saved or 0.0):
        return "done", "no heartbeat; scored after its last checkpoint"
    newest = _newest([run, runs.checkpoint(run).parent])
    window = float(_select(config, "checkpoint.every_minutes") or 30) * 60 + LEGACY_SLACK
    if newest is not None and now - newest < window:
        return "running", f"no heartbeat; a file written {duration(now - newest)} ago"
    if has_score:
        return "done", f"no heartbeat; judged by its {runs.FOLD_SCORE}"
    return "interrupted", "no heartbeat, no score, no file written lately"


def fold_status(experiment: str, fold: int, run: Path, config: DictConfig | None, now: float) -> FoldStatus:
    """One fold's state and numbers from its run folder."""
    score, oof = _json(run / runs.FOLD_SCORE), _json(run / runs.OOF_SCORE)
    saved = [
        path.stat().st_mtime
        for path in (runs.checkpoint(run, runs.LAST), runs.checkpoint(run))
        if path.is_file()
    ]
    status = FoldStatus(
        experiment,
        fold,
        "",
        str(run),
        max_epochs=_select(config, "trainer.max_epochs"),
        val_dice=None if score is None else float(score["best"]),
        best_epoch=None if score is None else int(score["epoch"]),
        oof_dice=None if oof is None else float(oof["dice"]),
        checkpoint_age_s=now - max(saved) if saved else None,
    )
    beat = runs.read_heartbeat(run)
    if beat is None:
        status.state, status.note = _by_files(run, config, score is not None, now)
        return status
    status.state, status.note = pulse(beat, now)
    status.epochs_done, status.max_epochs = beat["epochs_done"], beat["max_epochs"]
    status.heartbeat_age_s = now - float(beat["time"])
    if status.state == "interrupted" and status.max_epochs and status.epochs_done >= status.max_epochs:
        status.state, status.note = "done", f"every epoch done; {status.note}"
    if status.state == "running":
        status.eta_s = eta(beat, now)
    return status


def _experiment_name(group: Path, root: Path) -> str:
    """An experiment folder's name relative to ``root``, or its own name when it is ``root`` or above it."""
    try:
        name = group.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        name = "."
    return group.resolve().name if name == "." else name


def fold_table(root: Path, now: float) -> list[FoldStatus]:
    """Every fold under ``root``, by experiment, with the folds its n_folds counts that have no folder."""
    groups: dict[Path, dict[int, Path]] = {}
    for run in runs.run_folders(root, started=True):
        groups.setdefault(run.parent, {})[int(runs.FOLD_DIR.fullmatch(run.name).group(1))] = run
    table = []
    for group, by_fold in sorted(groups.items()):
        name = _experiment_name(group, root)
        configs = {
            k: load_run_config(run, check_targets=False) if (run / runs.RUN_CONFIG).is_file() else None
            for k, run in by_fold.items()
        }
        folds = {k: fold_status(name, k, run, configs[k], now) for k, run in by_fold.items()}
        n_folds = max((int(_select(config, "n_folds") or 0) for config in configs.values()), default=0)
        folds.update({k: FoldStatus(name, k, "missing") for k in range(n_folds) if k not in folds})
        table += [folds[k] for k in sorted(folds)]
    return table


# Prediction folders and submissions.


def prediction_status(folder: Path, root: Path, now: float) -> PredictionStatus:
    """A prediction folder's state: done with a manifest, else what its heartbeat (or newest map) says."""
    name = _experiment_name(folder, root)
    ids = runs.map_ids(folder)
    manifest, beat = runs.read_manifest(folder), runs.read_heartbeat(folder)
    if manifest is not None:
        status = PredictionStatus(name, manifest.get("stage"), "done", len(ids), manifest.get("images"))
        status.checkpoints, status.inputs = manifest.get("checkpoints", []), manifest.get("inputs", [])
        try:
            runs.finished_manifest(folder, ids)
        except CarvanaError as error:
            status.state, status.note = "interrupted", str(error)
        return status
    if beat is not None:
        status = PredictionStatus(
            name, beat["stage"], "", len(ids), beat.get("images"), beat.get("checkpoints", [])
        )
        status.state, status.note = pulse(beat, now)
        if status.state == "done":  # the maps ended but the manifest never came
            status.state, status.note = "interrupted", f"predict.py ended without its {runs.MANIFEST}"
        if status.state == "running":
            status.eta_s = eta(beat, now)
        return status
    newest = _newest([folder])
    fresh = newest is not None and now - newest < STALE_FLOOR
    note = f"no {runs.MANIFEST}, no heartbeat (an ensemble on its way?)"
    return PredictionStatus(name, None, "running" if fresh else "interrupted", len(ids), None, note=note)


def _sample_of(manifest: Mapping[str, Any] | None) -> Path | None:
    """The sample submission beside the test images a folder's maps came from (an ensemble: its inputs')."""
    if manifest is None:
        return None
    data = manifest.get("data")
    for inner in manifest.get("input_manifests") or []:
        data = data or (inner or {}).get("data")
    return Path(data).parent / SAMPLE_SUBMISSION if data else None


def _count_rows(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return max(lines - 1, 0)  # the header


@functools.lru_cache(maxsize=64)
def _checked(
    path: Path, sample: Path, shape: tuple[int, int], version: tuple[int, int]
) -> tuple[int, bool, str]:
    """(rows, valid, problem) of one version (mtime, size) of a submission: checked once under --watch."""
    try:
        return submission.check(path, sample, shape), True, ""
    except CarvanaError as error:
        return _count_rows(path), False, str(error)


def submission_status(
    path: Path, folder: Path, root: Path, sample: Path | None, check: bool
) -> SubmissionStatus:
    """A submission's rows and whether it passes ``carvana submission check`` against its sample."""
    name = f"{_experiment_name(folder, root)}/{path.name}"
    sample = sample or _sample_of(runs.read_manifest(folder))
    files = runs.map_files(folder)
    if not check:
        return SubmissionStatus(name, _count_rows(path), None, "not checked (--no-check)")
    if sample is None or not sample.is_file() or not files:
        why = f"no sample submission at {sample}" if files else "no map to take the mask size from"
        return SubmissionStatus(name, _count_rows(path), None, f"not checked: {why} (--sample)")
    stat = path.stat()
    shape = runs.map_size(next(iter(files.values())))
    rows, valid, problem = _checked(path, sample, shape, (stat.st_mtime_ns, stat.st_size))
    return SubmissionStatus(name, rows, valid, problem)


def board(outputs: Path, predictions: Path, sample: Path | None = None, check: bool = True) -> Board:
    """The whole board; a folder that does not exist shows nothing, both missing is an error."""
    if not outputs.is_dir() and not predictions.is_dir():
        raise CarvanaError(f"neither {outputs} nor {predictions} exists: nothing to show")
    now = time.time()
    folds = fold_table(outputs, now) if outputs.is_dir() else []
    folders = runs.prediction_folders(predictions) if predictions.is_dir() else []
    submissions = [
        submission_status(folder / name, folder, predictions, sample, check)
        for folder in folders
        for name in SUBMISSIONS
        if (folder / name).is_file()
    ]
    table = [prediction_status(folder, predictions, now) for folder in folders]
    return Board(now, str(outputs), str(predictions), folds, table, submissions)


# Output.


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.5f}"


def _age(seconds: float | None) -> str:
    return "" if seconds is None else f"{duration(seconds)} ago"


def _fraction(done: int | None, total: int | None) -> str:
    return f"{'?' if done is None else done}/{'?' if total is None else total}"


def _made_by(status: PredictionStatus) -> str:
    """The run folders of a folder's checkpoints, by experiment (``linknet34 fold0,fold1``), or its inputs."""
    if status.inputs:
        return f"ensemble of {', '.join(Path(folder).name for folder in status.inputs)}"
    by_experiment: dict[str, list[str]] = {}
    for path in status.checkpoints:
        run = runs.run_of_checkpoint(path)
        name = run.name if Path(path).name == runs.BEST else f"{run.name} {Path(path).name}"
        by_experiment.setdefault(run.parent.name, []).append(name)
    return "; ".join(f"{experiment} {','.join(names)}" for experiment, names in by_experiment.items())


def aligned(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing spaces."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def render(state: Board) -> str:
    """The board as plain text: the folds, the prediction folders, the submissions."""
    fold_rows = [
        [
            s.experiment,
            str(s.fold),
            s.state,
            "" if s.state == "missing" else _fraction(s.epochs_done, s.max_epochs),
            _number(s.val_dice),
            _number(s.oof_dice),
            _age(s.checkpoint_age_s),
            "" if s.eta_s is None else duration(s.eta_s),
            s.note,
        ]
        for s in state.folds
    ]
    header = ["experiment", "fold", "state", "epochs", "val/dice", "OOF Dice", "checkpoint", "ETA", "note"]
    parts = [f"runs in {state.outputs}", aligned(header, fold_rows) if fold_rows else "  none"]
    prediction_rows = [
        [
            p.folder,
            p.stage or "?",
            p.state,
            _fraction(p.images_done, p.images),
            _made_by(p),
            "" if p.eta_s is None else duration(p.eta_s),
            p.note,
        ]
        for p in state.prediction_folders
    ]
    header = ["folder", "stage", "state", "images", "made by", "ETA", "note"]
    parts += ["", f"prediction folders in {state.predictions}"]
    parts.append(aligned(header, prediction_rows) if prediction_rows else "  none")
    validated = {True: "yes", False: "NO", None: "unchecked"}
    submission_rows = [[s.path, str(s.rows), validated[s.validated], s.note] for s in state.submissions]
    parts += ["", "submissions"]
    parts.append(aligned(["file", "rows", "valid", "note"], submission_rows) if submission_rows else "  none")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """CLI: the board once, or every ``--watch`` seconds until Ctrl-C; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="carvana status", description=__doc__.splitlines()[0])
    parser.add_argument(
        "outputs", type=Path, nargs="?", default=Path("outputs"), help="run folders (outputs)"
    )
    parser.add_argument(
        "predictions",
        type=Path,
        nargs="?",
        default=Path("predictions"),
        help="prediction folders (predictions)",
    )
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    parser.add_argument(
        "--json", action="store_true", help="JSON for scripts (one object a line with --watch)"
    )
    parser.add_argument("--sample", type=Path, help="the sample submission to check submissions against")
    parser.add_argument("--no-check", action="store_true", help="count submission rows without checking them")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch takes a positive number of seconds")

    def show() -> str:
        state = board(args.outputs, args.predictions, args.sample, not args.no_check)
        if args.json:
            return json.dumps(dataclasses.asdict(state), indent=None if args.watch else 2)
        clear = "\x1b[H\x1b[2J" if args.watch and sys.stdout.isatty() else ""
        return clear + render(state)

    if args.watch is None:
        return run_command(show)
    try:
        while (status := run_command(show)) == 0:
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
