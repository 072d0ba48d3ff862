"""Beyond the 4th place, measured on real cars: what each of the top teams' extras adds to pooled OOF Dice.

    python -m bench.beyond --out outputs/beyond --minutes 3 --second-minutes 2   # about 2.5 h on 2 cores

On ``--root`` (``../shared/carvana/small512``), one after the other, every stage resumable (a stage whose
folds all have ``oof_score.json`` is not run again): two first-level experiments (``cpu_small512`` with
LinkNet-34 and LinkNet-18) on all 5 car-grouped folds, ``carvana select`` on their OOF maps (weights,
threshold, post-processing), then the second stages on every fold (``--second``, in this order): the
two-stage crop and the contour refinement on the best single experiment's maps, the second-level refiner on
both experiments' maps. Every training stage gets the same per-fold wall-time budget (``trainer.max_time``;
the first level ``--minutes``, the second stages ``--second-minutes``), and its folds' OOF pass comes after it
(hflip TTA, but for the two-stage crop and the contour refinement: see ``run``).
Writes ``beyond.md`` and ``beyond.json`` into ``--out`` (and ``--table`` when given): each row's pooled OOF
Dice over the same images, its gain over the best single experiment, and the wall time it adds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import report
from carvana import runs
from carvana.evaluate.selection import select
from carvana.predict.oof import pooled_dice

REPO = Path(__file__).resolve().parent.parent
ROOT = os.environ.get("CARVANA_SMALL512", "../shared/carvana/small512")
FOLDS = 5
FIRST = ("linknet34", "linknet18")
SECOND = ("two_stage", "contour", "refine")
TIMES = "beyond_times.json"


def folds_done(experiment: Path) -> bool:
    return all((runs.fold_dir(experiment, fold) / runs.OOF_SCORE).is_file() for fold in range(FOLDS))


def folder_minutes(experiment: Path) -> float:
    """Wall minutes of a stage run before this benchmark recorded times: its first fold's start (the run
    config) to its last fold's OOF score."""
    start = min(runs.fold_dir(experiment, f).joinpath(runs.RUN_CONFIG).stat().st_mtime for f in range(FOLDS))
    end = max(runs.fold_dir(experiment, f).joinpath(runs.OOF_SCORE).stat().st_mtime for f in range(FOLDS))
    return (end - start) / 60


class Stages:
    """The stage runs of one ``--out`` folder, each timed once, its minutes kept in ``beyond_times.json``."""

    def __init__(self, out: Path, root: str, val_fraction: float = 1.0):
        self.out, self.root = out, root
        # the recipe validates once, at the end of its budget, and keeps that checkpoint whatever it scores:
        # a fraction of the validation cars is enough for val/dice, and the OOF pass scores them all
        self.validation = [] if val_fraction == 1 else [f"+trainer.limit_val_batches={val_fraction}"]
        self.times_path = out / TIMES
        self.minutes: dict[str, float] = (
            json.loads(self.times_path.read_text()) if self.times_path.is_file() else {}
        )

    def train(self, name: str, minutes: float, *overrides: str) -> Path:
        """``train.py -m`` over the 5 folds of one stage, unless they are all done."""
        experiment = self.out / name
        if not folds_done(experiment):
            command = [
                sys.executable, "train.py", "-m", f"name={name}", f"paths.output_root={self.out}",
                f"data.root={self.root}", f"trainer.max_time.minutes={minutes}", "logger=csv",
                f"fold={','.join(map(str, range(FOLDS)))}", *self.validation, *overrides,
            ]  # fmt: skip
            self.timed(name, lambda: subprocess.run(command, check=True, cwd=REPO))
        self.minutes.setdefault(name, folder_minutes(experiment))
        return experiment

    def timed(self, name: str, action) -> object:
        start = time.monotonic()
        result = action()
        self.minutes[name] = (time.monotonic() - start) / 60
        self.times_path.write_text(json.dumps(self.minutes, indent=2))
        return result


def run(
    out: Path,
    root: str,
    minutes: float,
    second: float,
    second_stages: Sequence[str] = SECOND,
    prefix: str = "first_",
    val_fraction: float = 1.0,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, str(Path(root).resolve()), val_fraction)
    recipe = ["+experiment=cpu_small512"]
    first = [stages.train(f"{prefix}{model}", minutes, *recipe, f"model={model}") for model in FIRST]

    record = stages.timed("select", lambda: select(first, workers=0))
    runs.write_selection(out / runs.SELECTION, record)
    singles = record["single_dice"]  # by experiment folder name
    best = max(first, key=lambda experiment: singles[experiment.name])
    other = next(experiment for experiment in first if experiment != best)

    # the second stages: cpu_small512's trainer (budget, LR schedule, precision) without its resizing
    common = ["~callbacks.progressive_resize"]
    both = ",".join(str(experiment) for experiment in first)
    plans = {
        "two_stage": (
            # its OOF pass predicts a box of about 2.3x the first level's 256 px input: LinkNet-18 and no
            # TTA keep it near the first level's cost on 2 CPU cores
            ["+experiment=[cpu_small512,two_stage]", f"data.sources=[{best}]", "model=linknet18",
             "model.encoder_weights=null", "data.geometry.crop=[256,256]", "oof.hflip=false"],
            f"stage 1 {best.name}; stage 2 LinkNet-18 on 256 px crops at 512, no TTA",
        ),
        "contour": (
            # about 30 patches an image, together about a full-resolution refine_unet pass: no TTA either
            ["+experiment=[cpu_small512,contour]", f"data.sources=[{best}]", "data.geometry.crop=[64,64]",
             "data.batch_size=32", "oof.hflip=false"],
            f"on {best.name}; refine_unet on 64 px patches, no TTA",
        ),
        "refine": (
            ["+experiment=[cpu_small512,refine]", f"data.sources=[{both}]", "data.geometry.mode=pad",
             "model.in_channels=5"],
            "refine_unet on the image + both maps, at 512",
        ),
    }  # fmt: skip
    names = {"two_stage": "two-stage crop", "contour": "contour refinement", "refine": "second-level refiner"}
    second_rows = []
    for stage in second_stages:
        overrides, detail = plans[stage]
        experiment = stages.train(stage, second, *common, *overrides)
        pooled = pooled_dice([runs.fold_dir(experiment, fold) for fold in range(FOLDS)])
        second_rows.append((names[stage], detail, pooled, stages.minutes[stage]))

    scores = record["oof_dice"]
    m = stages.minutes
    rows = [
        ("best single experiment", best.name, scores["best_single"], m[best.name]),
        ("plain mean of both", f"+ {other.name}", scores["plain_mean"], m[other.name]),
        ("selected weights (Caruana)", _weights(record), scores["selected"], m["select"]),
        (f"+ threshold {record['threshold']:.3f}", "", scores["threshold"], 0.0),
        ("+ post-processing", _steps(record), scores["postprocess"], 0.0),
        *second_rows,
    ]
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{report.cpu_model()}, {os.cpu_count()} CPUs",  # the stages train with torch's default
        "root": root,
        "images": record["images"],
        "minutes_per_fold": {"first": minutes, "second": second},
        "rows": [
            {
                "row": row,
                "detail": detail,
                "oof_dice": dice,
                "gain": dice - scores["best_single"],
                "minutes": t,
            }
            for row, detail, dice, t in rows
        ],
    }


def _weights(record: dict) -> str:
    pairs = zip(record["experiments"], record["weights"], strict=True)
    return ", ".join(f"{Path(e).name} {w:.2f}" for e, w in pairs)


def _steps(record: dict) -> str:
    return ", ".join(name for name, on in record["postprocess"].items() if on) or "none kept"


def markdown(result: dict) -> str:
    budget = result["minutes_per_fold"]
    lines = [
        "# Beyond the 4th place: pooled OOF Dice on real cars",
        "",
        f"{result['date']}, {result['machine']}; `python -m bench.beyond` on {result['root']}: "
        f"{result['images']} out-of-fold images (5 car-grouped folds, 512x512). Training budgets a fold: "
        f"first level {budget['first']} min, second stages {budget['second']} min (`trainer.max_time`), "
        "each fold's OOF pass (hflip TTA unless the row says otherwise) after it. Minutes: the wall time "
        "the row adds, its 5 folds' training and OOF passes together.",
        "",
        "| row | detail | pooled OOF Dice | vs best single | minutes added |",
        "|---|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        figures = f"{row['oof_dice']:.5f} | {row['gain']:+.5f} | {row['minutes']:.1f}"
        lines.append(f"| {row['row']} | {row['detail']} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.beyond", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/beyond"), help="the stages' run folders")
    parser.add_argument("--root", default=ROOT, help="a Kaggle-layout folder of real cars")
    parser.add_argument("--minutes", type=float, default=3, help="first-level training minutes a fold")
    parser.add_argument(
        "--second-minutes", type=float, default=2, help="second-stage training minutes a fold"
    )
    parser.add_argument(
        "--second", default=",".join(SECOND), help=f"second stages to run, of {', '.join(SECOND)}"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=1.0, help="of the validation batches, for the in-fit val/dice"
    )
    parser.add_argument("--prefix", default="first_", help="the first-level experiments' folder prefix")
    parser.add_argument("--table", type=Path, help="also write the markdown table here (bench/beyond.md)")
    args = parser.parse_args(argv)
    second = [name.strip() for name in args.second.split(",") if name.strip()]
    if set(second) - set(SECOND):
        parser.error(f"--second: of {', '.join(SECOND)}")
    minutes = (args.minutes, args.second_minutes)
    result = run(args.out.resolve(), args.root, *minutes, second, args.prefix, args.val_fraction)
    text = markdown(result)
    (args.out / "beyond.json").write_text(json.dumps(result, indent=2))
    (args.out / "beyond.md").write_text(text)
    if args.table:
        args.table.write_text(text)
        args.table.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
