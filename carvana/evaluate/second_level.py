"""Second level, measured: the refiner's pooled out-of-fold Dice against the plain mean of its sources.

The refiner is a small U-Net on the image plus K first-level probability maps (``conf/model/refine_unet``).

Training maps are strictly out-of-fold. An image of a car in fold j gets, from each first-level model, the
map that model's fold-j run predicted (``<source>/fold<j>/oof/<id>.png``): that run never trained on the
car. The refiner uses the same car-grouped folds, so its validation cars are out-of-fold for it as well.
At test time the maps are the first-level models' test predictions (``predict.py`` folders).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carvana import runs
from carvana.data.datasets import oof_maps
from carvana.data.kaggle import read_mask
from carvana.errors import CarvanaError, check_shape, run_command
from carvana.metrics import dice
from carvana.predict.oof import pooled_dice, validation_samples


def compare(
    refine_dir: str | Path, sources: Sequence[str | Path], threshold: float = 0.5
) -> dict[str, float]:
    """Pooled out-of-fold Dice of the refiner's folds against the plain mean of its sources' maps on the same
    images: the number that says whether the second level earns its keep."""
    folds = sorted(path.parent for path in Path(refine_dir).glob(f"fold*/{runs.OOF_SCORE}"))
    if not folds:
        raise CarvanaError(f"{refine_dir}: no fold*/{runs.OOF_SCORE} (train the refiner's folds first)")
    sources = [Path(source) for source in sources]
    scores = []
    for run in folds:
        samples = validation_samples(run)
        maps = oof_maps(sources, samples, runs.read_folds(run / runs.FOLDS))
        for sample, paths in zip(samples, maps, strict=True):
            truth = read_mask(sample.mask)
            probs = [runs.read_map(path) for path in paths]
            for path, prob in zip(paths, probs, strict=True):
                check_shape(
                    sample.image_id, path, prob.shape, truth.shape, f"the size of its mask {sample.mask}"
                )
            scores.append(dice(np.mean(probs, axis=0) > threshold * 255, truth))
    return {"mean of sources": float(np.mean(scores)), "refine": pooled_dice(folds)}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``REFINE_DIR --sources A B ...`` prints both pooled OOF Dice scores."""
    parser = argparse.ArgumentParser(prog="carvana refine", description=__doc__.splitlines()[0])
    parser.add_argument("refine_dir", type=Path, help="the refiner's experiment folder, e.g. outputs/refine")
    parser.add_argument("--sources", type=Path, nargs="+", required=True, help="its data.sources")
    args = parser.parse_args(argv)

    def action() -> str:
        scores = compare(args.refine_dir, args.sources)
        return "\n".join(f"{name} (pooled OOF Dice): {value:.6f}" for name, value in scores.items())

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
