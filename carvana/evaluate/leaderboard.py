"""Leaderboard scores beside the CV: ``carvana lb <submission> <score>`` records what Kaggle said.

Kaggle scores a submission by itself; the experiment it came from is known only here, from the prediction
folder's manifest (its checkpoints' run folders). The score lands in the experiment folder's ``lb.json``
(every submission scored, newest last), and the CV table's LB column shows the newest, so CV and LB stay
side by side as the 4th-place team kept them. An ensemble of several experiments is no CV row of its own:
name the row it belongs to with ``--experiment``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from carvana import runs
from carvana.errors import CarvanaError, check_fraction, run_command


def experiment_of(submission: Path) -> Path:
    """The one experiment folder whose checkpoints made the maps beside ``submission``."""
    manifest = runs.read_manifest(submission.parent)
    if manifest is None:
        raise CarvanaError(
            f"{submission}: no {runs.MANIFEST} beside it to tell which experiment made it; "
            "name it with --experiment outputs/<name>"
        )
    found = sorted({runs.run_of_checkpoint(path).parent for path in manifest.get("checkpoints", [])})
    if len(found) != 1:
        names = ", ".join(str(path) for path in found) or "none"
        raise CarvanaError(
            f"{submission}: made by the checkpoints of {len(found)} experiments ({names}); "
            "name the CV row it belongs to with --experiment outputs/<name>"
        )
    return found[0]


def scores(experiment: Path) -> list[runs.Record]:
    """The scores recorded for an experiment, oldest first; none without an ``lb.json``."""
    path = Path(experiment) / runs.LEADERBOARD
    if not path.is_file():
        return []
    entries = runs.read_json(path)["scores"]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise CarvanaError(f"{path}: 'scores' is not a list of records (edited?)")
    return [runs.Record(path, entry) for entry in entries]


def latest(experiment: Path) -> float | None:
    """The newest recorded leaderboard score of an experiment, for the CV table's LB column."""
    recorded = scores(experiment)
    return float(recorded[-1]["score"]) if recorded else None


def record(submission: Path, score: float, experiment: Path | None = None, board: str = "public") -> str:
    """Append ``score`` of ``submission`` to its experiment's ``lb.json``; returns the line to print."""
    check_fraction("score", score)
    if not submission.is_file():
        raise CarvanaError(f"{submission}: no such submission file")
    experiment = experiment or experiment_of(submission)
    if not experiment.is_dir():
        raise CarvanaError(f"--experiment {experiment}: no such experiment folder")
    digest = hashlib.sha256()
    with open(submission, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    entry = {
        "submission": str(submission.resolve()),
        "sha256": digest.hexdigest(),
        "score": score,
        "board": board,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    previous = [dict(entry) for entry in scores(experiment)]
    runs.write_json(experiment / runs.LEADERBOARD, {"scores": [*previous, entry]})
    return f"{experiment.name}: {board} LB {score:.5f} for {submission} ({len(previous) + 1} recorded)"


def main(argv: list[str] | None = None) -> int:
    """CLI: record a leaderboard score; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="carvana lb", description=__doc__.splitlines()[0])
    parser.add_argument("submission", type=Path, help="the submission file you uploaded")
    parser.add_argument("score", type=float, help="the score Kaggle gave it, e.g. 0.99702")
    parser.add_argument("--experiment", type=Path, help="its experiment folder, outputs/<name>")
    parser.add_argument("--board", choices=["public", "private"], default="public")
    args = parser.parse_args(argv)
    return run_command(lambda: record(args.submission, args.score, args.experiment, args.board))


if __name__ == "__main__":
    sys.exit(main())
