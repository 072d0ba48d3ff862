"""The cross-validation table: per-fold val Dice, mean, std and pooled out-of-fold Dice of each experiment.

Every run folder ``<dir>/<name>/fold<k>`` holding a ``fold_score.json`` counts, and each ``<name>`` (the model
or the recipe) is a row. The table goes to ``<dir>/cv_report.md`` and ``cv_report.csv`` (the LB column: the
newest score ``carvana lb`` recorded), a bar chart ``cv_report.png`` (every fold, mean, std, pooled OOF) and,
for experiments logged to W&B, a summary run of job type ``cv`` in the experiment's W&B group. A Hydra
callback prints it when a multirun ends, for the experiments the multirun trained; for any folder of finished
runs:

    carvana report outputs                # or outputs/linknet34; --no-wandb
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from carvana import runs
from carvana.config import load_run_config
from carvana.errors import CarvanaError, check_folder, print_error, run_command
from carvana.evaluate import leaderboard
from carvana.files import atomic_write_bytes, atomic_write_text
from carvana.predict.oof import pooled_dice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One finished fold: its run folder, best val/dice and its epoch, and its own OOF Dice if scored."""

    run: Path
    dice: float
    epoch: int
    oof: float | None


@dataclass(frozen=True)
class Experiment:
    """The folds of one model or recipe, and their Dice pooled over every OOF image of the scored folds."""

    name: str
    folds: dict[int, Fold]
    n_folds: int | None
    oof: float | None
    lb: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean([fold.dice for fold in self.folds.values()]))

    @property
    def std(self) -> float | None:
        """The spread between folds (sample std); None for a single fold."""
        dices = [fold.dice for fold in self.folds.values()]
        return float(np.std(dices, ddof=1)) if len(dices) > 1 else None

    @property
    def oof_folds(self) -> list[int]:
        return [k for k, fold in self.folds.items() if fold.oof is not None]


def experiment_name(run: Path, root: Path) -> str:
    """The run's experiment: its parent folder relative to ``root``, or that folder's name."""
    group = run.resolve().parent
    try:
        name = group.relative_to(root.resolve()).as_posix()
    except ValueError:  # root is the fold folder itself
        name = "."
    return group.name if name == "." else name


def _n_folds(run: Path) -> int | None:
    if not (run / runs.RUN_CONFIG).is_file():
        return None
    return int(load_run_config(run, check_targets=False).n_folds)


def experiments(root: Path, names: Collection[str] | None = None) -> list[Experiment]:
    """The experiments under ``root`` (all, or those in ``names``), best mean val/dice first."""
    groups: dict[str, dict[int, Fold]] = {}
    for run in runs.run_folders(root):
        name = experiment_name(run, root)
        if names is not None and name not in names:
            continue
        record = runs.read_json(run / runs.FOLD_SCORE)
        oof = runs.read_json(run / runs.OOF_SCORE)["dice"] if (run / runs.OOF_SCORE).is_file() else None
        fold = Fold(run, float(record["best"]), int(record["epoch"]), oof)
        groups.setdefault(name, {})[int(record["fold"])] = fold
    if not groups:
        raise CarvanaError(f"{root}: no finished run under it (no fold<k>/{runs.FOLD_SCORE})")
    found = []
    for name, by_fold in groups.items():
        ordered = dict(sorted(by_fold.items()))
        scored = [fold.run for fold in ordered.values() if fold.oof is not None]
        first = next(iter(ordered.values())).run
        oof = pooled_dice(scored) if scored else None
        found.append(Experiment(name, ordered, _n_folds(first), oof, leaderboard.latest(first.parent)))
    return sorted(found, key=lambda e: (-e.mean, e.name))


def _fold_columns(table: list[Experiment]) -> list[int]:
    return sorted({k for experiment in table for k in experiment.folds})


def _number(value: float | None, digits: int = 5) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _folds_done(experiment: Experiment) -> str:
    done = len(experiment.folds)
    return f"{done}/{experiment.n_folds}" if experiment.n_folds else str(done)


def markdown(table: list[Experiment]) -> str:
    """The table in Markdown: one row per experiment, the OOF cell saying which folds it pools if not all."""
    columns = _fold_columns(table)
    header = ["experiment", *(f"fold{k}" for k in columns), "mean", "std", "folds", "OOF Dice", "LB"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 2) + "|---|"]
    for e in table:
        oof = _number(e.oof)
        if e.oof is not None and len(e.oof_folds) < len(e.folds):
            oof += f" ({len(e.oof_folds)} of {len(e.folds)} folds)"
        cells = [e.name, *(_number(e.folds[k].dice) if k in e.folds else "" for k in columns)]
        cells += [_number(e.mean), _number(e.std), _folds_done(e), oof, _number(e.lb)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(table: list[Experiment]) -> str:
    """The table as CSV at full precision, with the OOF folds spelled out and the newest leaderboard score."""
    columns = _fold_columns(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fixed = ["mean", "std", "folds", "n_folds", "oof_dice", "oof_folds", "lb"]
    writer.writerow(["experiment", *(f"fold{k}" for k in columns), *fixed])
    for e in table:
        dices = [e.folds[k].dice if k in e.folds else "" for k in columns]
        std = "" if e.std is None else e.std
        oof = "" if e.oof is None else e.oof
        oof_folds = " ".join(map(str, e.oof_folds))
        lb = "" if e.lb is None else e.lb
        writer.writerow([e.name, *dices, e.mean, std, len(e.folds), e.n_folds or "", oof, oof_folds, lb])
    return out.getvalue()


def bar_chart(table: list[Experiment]) -> bytes:
    """PNG: per experiment a bar at the mean with the std as error bar, each fold a dot, the OOF a diamond.

    The y axis spans the scores only: Dice near 0.997 would show no differences on a 0-1 axis.
    """
    from matplotlib.figure import Figure

    values = [f.dice for e in table for f in e.folds.values()] + [e.oof for e in table if e.oof is not None]
    low, high = min(values), max(values)
    pad = max(0.25 * (high - low), 1e-3)
    bottom = low - pad
    figure = Figure(figsize=(2.0 + 1.2 * len(table), 4.0), dpi=120)
    axes = figure.subplots()
    x = np.arange(len(table))
    std = [e.std or 0.0 for e in table]
    means = [e.mean - bottom for e in table]
    axes.bar(x, means, 0.6, bottom, yerr=std, capsize=4, color="#9ecae1", label="mean, std")
    for i, e in enumerate(table):
        dices = [fold.dice for fold in e.folds.values()]
        spread = np.linspace(-0.15, 0.15, len(dices)) if len(dices) > 1 else [0.0]
        axes.scatter(
            i + np.asarray(spread), dices, s=14, color="black", zorder=3, label="fold" if i == 0 else None
        )
        if e.oof is not None:
            axes.scatter([i], [e.oof], marker="D", s=30, color="#d62728", zorder=4, label="pooled OOF")
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axes.set_xlim(-0.7, len(table) - 0.3)
    axes.set_ylim(bottom, high + pad)
    axes.set_xticks(x, [e.name for e in table], rotation=30, ha="right")
    axes.set_ylabel("best val/dice")
    axes.set_title("Cross-validation")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", bbox_inches="tight")  # the legend sits right of the axes
    return png.getvalue()


def _wandb_settings(run: Path) -> dict[str, Any] | None:
    """Project, group, mode and tags of the run's W&B logger, resolved as training did (entries that need
    Hydra's runtime come back None); None if the run had no W&B logger."""
    has_config = (run / runs.RUN_CONFIG).is_file()
    config = load_run_config(run, check_targets=False) if has_config else OmegaConf.create()
    if not str(OmegaConf.select(config, "logger._target_", default="")).endswith("WandbLogger"):
        return None

    def get(key: str, default: Any = None) -> Any:
        value = OmegaConf.select(config, key, default=default, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return {
        "project": get("logger.project", "carvana"),
        "entity": get("logger.entity"),
        "group": get("logger.group"),
        "mode": "offline" if get("logger.offline", True) is not False else None,  # None: WANDB_MODE decides
        "tags": get("logger.tags") or None,
    }


def log_wandb(experiment: Experiment) -> Path | None:
    """A W&B run of job type ``cv`` in the group of the experiment's folds: the folds as a ``wandb.Table``
    and the CV summary. It keeps one id, so that reports after more folds update it. Returns its folder."""
    first = next(iter(experiment.folds.values())).run
    settings = _wandb_settings(first)
    if settings is None:
        return None
    import wandb

    group_dir = first.resolve().parent
    run = wandb.init(
        **{**settings, "group": settings["group"] or experiment.name},
        job_type="cv",
        name=f"{experiment.name}-cv",
        id=runs.wandb_id(group_dir),
        resume="allow",
        dir=str(group_dir),
        config={"folds": list(experiment.folds), "n_folds": experiment.n_folds},
    )
    rows = [[k, fold.dice, fold.epoch, fold.oof] for k, fold in experiment.folds.items()]
    run.log({"cv/table": wandb.Table(columns=["fold", "val/dice", "epoch", "oof/dice"], data=rows)})
    run.summary.update(
        {
            "cv/mean": experiment.mean,
            "cv/std": experiment.std,
            "cv/folds": len(experiment.folds),
            "cv/oof_dice": experiment.oof,
        }
    )
    run_dir = None if run.disabled else Path(run.dir).parent  # WANDB_MODE=disabled
    run.finish()
    return run_dir


def report(root: Path, names: Collection[str] | None = None, wandb_runs: bool = True) -> str:
    """Write the CV table of the experiments under ``root`` (all, or ``names``); returns what to print."""
    check_folder(root, "run folder")
    table = experiments(root, names)
    text = markdown(table)
    files = {
        "table": atomic_write_text(root / f"{runs.CV_REPORT}.md", text),
        "csv": atomic_write_text(root / f"{runs.CV_REPORT}.csv", csv_text(table)),
        "chart": atomic_write_bytes(root / f"{runs.CV_REPORT}.png", bar_chart(table)),
    }
    lines = [text, *(f"  {key:<7}{path}" for key, path in files.items())]
    if wandb_runs:
        for experiment in table:
            run_dir = log_wandb(experiment)
            if run_dir is not None:
                lines.append(f"  W&B    {experiment.name}: {run_dir}")
    return "\n".join(lines)


def _stamps(root: Path) -> dict[Path, tuple[int, ...]]:
    """When each run folder's config and score were last written (compared, never against a clock)."""
    return {
        run: tuple(
            (run / name).stat().st_mtime_ns
            for name in (runs.RUN_CONFIG, runs.FOLD_SCORE)
            if (run / name).exists()
        )
        for run in runs.run_folders(root)
    }


class CVReport(Callback):
    """Hydra callback: when a multirun ends, the CV table of the experiments it trained (their folds from
    earlier sweeps included), written into the sweep folder, printed and logged to W&B.

    Args:
        wandb: also log each experiment's ``cv`` run to W&B (for experiments that logged to W&B).
    """

    def __init__(self, wandb: bool = True):
        self.wandb = wandb
        self._before: dict[Path, tuple[int, ...]] = {}

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        self._before = _stamps(root) if root.is_dir() else {}

    @override
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        after = _stamps(root) if root.is_dir() else {}
        names = {experiment_name(run, root) for run, stamp in after.items() if self._before.get(run) != stamp}
        if not names:
            log.warning("%s: no fold finished in this multirun, no CV report", root)
            return
        try:
            print(report(root, names, self.wandb))
        except CarvanaError as error:  # the sweep itself went well: say why there is no table, exit 0
            print_error(error)


def main(argv: list[str] | None = None) -> int:
    """CLI: the CV table of a folder of finished runs; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="carvana report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a folder of run folders, e.g. outputs or outputs/linknet34")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the cv summary runs to W&B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    return run_command(lambda: report(args.dir, wandb_runs=not args.no_wandb))


if __name__ == "__main__":
    sys.exit(main())
