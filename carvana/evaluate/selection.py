"""Ensemble selection on out-of-fold maps: weights, threshold and post-processing chosen on pooled OOF Dice.

The experiments' OOF maps (same car-grouped folds) are pooled, and each choice is kept only where it raises
the pooled mean per-image Dice, as nnU-Net chooses its own post-processing from its cross-validation:

1. weights: greedy forward selection with replacement (Caruana et al. 2004, "Ensemble selection from
   libraries of models"): start from the best single experiment, add the experiment that raises the Dice
   most, again and again (one may be added several times: that is its weight), stop when none raises it;
   the plain mean replaces the result if it scores higher, so the selection never loses to it;
2. threshold: every cutoff of the 8-bit mean at once, from two histograms per image;
3. post-processing: largest component, minimum size, hole filling, each kept if it adds.

The result is a selection file (``carvana.runs.write_selection``) that ``carvana ensemble --selection`` and
``carvana submission write --selection`` read. Memory: the maps are streamed, one image's K maps and mask
per worker process at a time (K x H x W bytes, plus an int32 sum and two histograms), whatever the image
count. Each pass reads every map once: ``steps`` passes for the weights, one for the plain mean at every
cutoff (a second only when the selected weights are unequal), one for the post-processing.

    carvana select outputs/selection.yaml outputs/linknet34 outputs/unet11
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from carvana import runs
from carvana.data import folds
from carvana.data.datasets import oof_maps
from carvana.data.kaggle import Sample, read_mask
from carvana.errors import CarvanaError, check_shape, check_workers, run_command
from carvana.metrics import dice
from carvana.predict.oof import validation_samples
from carvana.progress import track
from carvana.submit.postprocess import PostProcess
from carvana.workers import imap_unordered

STEPS = tuple(runs.POSTPROCESS_STEPS)  # the order a step is tried in
CUTOFF = 127  # threshold 0.5: mask = mean map > 127, as carvana.submit.submission cuts it
# (true mask GIF, each experiment's OOF map)
Job = tuple[str, tuple[str, ...]]


def oof_images(experiments: Sequence[Path]) -> tuple[list[Sample], list[list[Path]]]:
    """Every OOF image of the first experiment's folds with its masks, and each experiment's map of it;
    the experiments must split the cars into the same folds."""
    runs_of_first = sorted(path.parent for path in experiments[0].glob(f"fold*/{runs.FOLDS}"))
    if not runs_of_first:
        raise CarvanaError(f"{experiments[0]}: no fold*/{runs.FOLDS} (train its folds first)")
    table = runs.read_folds(runs_of_first[0] / runs.FOLDS)
    folds.check_same_folds(experiments, table, "carvana select", str(runs_of_first[0] / runs.FOLDS))
    samples = [sample for run in runs_of_first for sample in validation_samples(run)]
    return samples, oof_maps(experiments, samples, table)


def _read(job: Job) -> tuple[np.ndarray, list[np.ndarray]]:
    """The true mask and the maps of one image, each map the mask's size."""
    gif, paths = job
    truth = read_mask(Path(gif)) != 0
    probs = [runs.read_map(path) for path in paths]
    for path, prob in zip(paths, probs, strict=True):
        check_shape(Path(path).stem, path, prob.shape, truth.shape, f"the size of its mask {gif}")
    return truth, probs


def _sum(probs: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
    """sum_m counts[m] * probs[m] as int32 (exact)."""
    total = np.zeros(probs[0].shape, np.int32)
    for prob, count in zip(probs, counts, strict=True):
        if count:
            total += prob.astype(np.int32) * count
    return total


def car(total: np.ndarray | int, count: int, cutoff: int) -> np.ndarray | bool:
    """Where the mean of ``count`` maps summing to ``total``, rounded half up, exceeds ``cutoff``: exactly
    ``2 total >= count (2 cutoff + 1)`` (``carvana ensemble`` computes the same mean in float32)."""
    return 2 * total >= count * (2 * cutoff + 1)


def _additions(job: Job, counts: tuple[int, ...]) -> list[float]:
    """Dice of the ensemble ``counts`` plus one more of each experiment, for each experiment."""
    truth, probs = _read(job)
    total = _sum(probs, counts)
    count = sum(counts) + 1
    return [dice(car(total + prob, count, CUTOFF), truth) for prob in probs]


def _cutoffs(job: Job, counts: tuple[int, ...]) -> np.ndarray:
    """Dice of the ensemble ``counts`` at every cutoff 0..254 of its 8-bit mean: with the histograms of the
    sum over all pixels and over the car's, the pixels above each cutoff are suffix sums."""
    truth, probs = _read(job)
    total = _sum(probs, counts)
    count = sum(counts)
    size = 255 * count + 1
    above = np.cumsum(np.bincount(total.ravel(), minlength=size)[::-1])[::-1]
    hits = np.cumsum(np.bincount(total[truth], minlength=size)[::-1])[::-1]
    cutoffs = np.arange(255)
    first = (count * (2 * cutoffs + 1) + 1) // 2  # the smallest car sum of each cutoff
    predicted, correct = above[first], hits[first]
    both = predicted + np.count_nonzero(truth)
    return np.where(both == 0, 1.0, 2.0 * correct / np.maximum(both, 1))


def _postprocessed(
    job: Job, counts: tuple[int, ...], cutoff: int, steps: Sequence[PostProcess]
) -> list[float]:
    """Dice of the ensemble ``counts`` at ``cutoff`` after each of ``steps``."""
    truth, probs = _read(job)
    mask = car(_sum(probs, counts), sum(counts), cutoff)
    return [dice(step(mask), truth) for step in steps]


def _pooled(
    fn: Callable[..., object], jobs: Sequence[Job], workers: int, description: str, **settings: object
) -> np.ndarray:
    """The mean over every image of ``fn(job, **settings)``, images streamed through worker processes."""
    total = None
    per_image = functools.partial(fn, **settings)
    for values in track(imap_unordered(per_image, jobs, workers), len(jobs), description):
        array = np.asarray(values, np.float64)
        total = array if total is None else total + array
    assert total is not None
    return total / len(jobs)


def _steps(min_size: int) -> dict[tuple[str, ...], PostProcess]:
    """Every combination of the three post-processing steps, by the names of those switched on."""
    combos = {}
    for on in itertools.product((False, True), repeat=len(STEPS)):
        chosen = tuple(name for name, flag in zip(STEPS, on, strict=True) if flag)
        combos[chosen] = PostProcess(on[0], min_size if on[1] else 0, on[2])
    return combos


def select(
    experiments: Sequence[str | Path], steps: int = 20, min_size: int = 1000, workers: int = 0
) -> dict:
    """Choose weights, threshold and post-processing on the experiments' pooled OOF maps; returns the
    selection record (``carvana.runs.write_selection``) with the pooled Dice of each stage."""
    experiments = [Path(e) for e in experiments]
    if not experiments:
        raise CarvanaError("no experiment folder to select from")
    if steps < 1:
        raise CarvanaError(f"steps must be >= 1, got {steps}")
    check_workers(workers)
    samples, maps = oof_images(experiments)
    jobs: list[Job] = [
        (str(sample.mask), tuple(map(str, paths))) for sample, paths in zip(samples, maps, strict=True)
    ]
    names = [experiment.name for experiment in experiments]
    counts = [0] * len(experiments)
    best, singles = -math.inf, None
    for step in range(steps):
        scores = _pooled(_additions, jobs, workers, f"selection step {step + 1}", counts=tuple(counts))
        singles = scores if singles is None else singles
        pick = int(np.argmax(scores))
        if scores[pick] <= best:
            break
        counts[pick] += 1
        best = float(scores[pick])
    assert singles is not None
    # One pass scores the plain mean at every cutoff; it is the threshold pass too when the plain mean wins,
    # or when the selection's counts are equal (the same mean).
    plain_curve = _pooled(_cutoffs, jobs, workers, "plain mean and threshold", counts=(1,) * len(counts))
    plain = float(plain_curve[CUTOFF])
    if plain > best:
        counts, best = [1] * len(counts), plain
    curve = plain_curve
    if len(set(counts)) > 1:
        curve = _pooled(_cutoffs, jobs, workers, "threshold", counts=tuple(counts))
    cutoff = int(np.argmax(curve)) if curve.max() > curve[CUTOFF] else CUTOFF
    combos = _steps(min_size)
    scored = dict(
        zip(
            combos,
            _pooled(
                _postprocessed,
                jobs,
                workers,
                "post-processing",
                counts=tuple(counts),
                cutoff=cutoff,
                steps=list(combos.values()),
            ),
            strict=True,
        )
    )
    kept: tuple[str, ...] = ()
    for name in STEPS:
        trial = tuple(n for n in STEPS if n in kept or n == name)
        if scored[trial] > scored[kept]:
            kept = trial
    chosen = combos[kept]
    total = sum(counts)
    return {
        "experiments": [str(experiment.resolve()) for experiment in experiments],
        "weights": [count / total for count in counts],
        "counts": counts,
        # floor(threshold * 255) is the cutoff, as the submission computes it
        "threshold": (cutoff + 0.5) / 255,
        "postprocess": {
            "largest_component": chosen.largest_component,
            "min_size": chosen.min_size,
            "fill_holes": chosen.fill_holes,
        },
        "oof_dice": {
            "best_single": float(singles.max()),
            "plain_mean": plain,
            "selected": best,
            "threshold": float(curve[cutoff]),
            "postprocess": float(scored[kept]),
        },
        "single_dice": {name: float(score) for name, score in zip(names, singles, strict=True)},
        "images": len(jobs),
        "steps": steps,
        "min_size": min_size,
    }


def report(record: dict) -> str:
    """The selection's lines: each stage's pooled OOF Dice and the weights."""
    scores = record["oof_dice"]
    best = max(record["single_dice"], key=record["single_dice"].get)
    weights = ", ".join(
        f"{Path(e).name} {w:.3f}" for e, w in zip(record["experiments"], record["weights"], strict=True)
    )
    steps = [name for name, on in record["postprocess"].items() if on] or ["none"]
    return "\n".join(
        [
            f"pooled OOF Dice over {record['images']} images:",
            f"  best single ({best}):  {scores['best_single']:.6f}",
            f"  plain mean:            {scores['plain_mean']:.6f}",
            f"  selected weights:      {scores['selected']:.6f}  ({weights})",
            f"  + threshold {record['threshold']:.4f}:  {scores['threshold']:.6f}",
            f"  + post-processing:     {scores['postprocess']:.6f}  ({', '.join(steps)})",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: ``OUT.yaml EXPERIMENT [EXPERIMENT ...]``; a CarvanaError is one ``error:`` line, exit 2."""
    parser = argparse.ArgumentParser(prog="carvana select", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help=f"the selection file to write, e.g. outputs/{runs.SELECTION}")
    parser.add_argument("experiments", type=Path, nargs="+", help="experiment folders with fold*/oof maps")
    parser.add_argument("--steps", type=int, default=20, help="at most this many greedy additions")
    parser.add_argument("--min-size", type=int, default=1000, help="pixels, for the min_size step")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    args = parser.parse_args(argv)

    def action() -> str:
        record = select(args.experiments, args.steps, args.min_size, args.workers)
        runs.write_selection(args.out, record)
        return f"{report(record)}\n{args.out}: written"

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
