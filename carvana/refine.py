"""Second level: a small U-Net that refines the image plus K first-level probability maps.

Training maps are strictly out-of-fold. An image of a car in fold j gets, from each first-level model, the
map that model's fold-j run predicted (``<source>/fold<j>/oof/<id>.png``): that run never trained on the
car. The refiner uses the same car-grouped folds, so its validation cars are out-of-fold for it as well.
At test time the maps are the first-level models' test predictions (``predict.py`` folders).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from carvana import folds, oof
from carvana.dataset import Sample, read_mask
from carvana.errors import CarvanaError, check_files, report
from carvana.postprocess import dice


def check_folds(sources: Sequence[Path], table: Mapping[str, int]) -> None:
    """Every source's fold runs must use the refiner's car -> fold table, else maps would leak."""
    for source in sources:
        for fold in sorted(set(table.values())):
            path = source / f"fold{fold}" / "folds.csv"
            if not path.is_file():
                raise CarvanaError(f"data.sources: {path} missing (train fold {fold} of {source} first)")
            if folds.read(path) != dict(table):
                raise CarvanaError(f"data.sources: {path} splits the cars differently from this run")


def test_maps(sources: Sequence[Path], samples: Sequence[Sample]) -> list[list[Path]]:
    """For each test sample, each source's test prediction ``<source>/<id>.png``."""
    return check_files(
        [[source / f"{s.image_id}.png" for source in sources] for s in samples], "test prediction"
    )


def compare(
    refine_dir: str | Path, sources: Sequence[str | Path], threshold: float = 0.5
) -> dict[str, float]:
    """Pooled out-of-fold Dice of the refiner's folds against the plain mean of its sources' maps on the same
    images: the number that says whether the second level earns its keep."""
    runs = sorted(path.parent for path in Path(refine_dir).glob(f"fold*/{oof.SCORE}"))
    if not runs:
        raise CarvanaError(f"{refine_dir}: no fold*/{oof.SCORE} (train the refiner's folds first)")
    sources = [Path(source) for source in sources]
    scores = []
    for run in runs:
        samples = oof.validation_samples(run)
        maps = oof.oof_maps(sources, samples, folds.read(run / "folds.csv"))
        for sample, paths in zip(samples, maps, strict=True):
            mean = np.mean([cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in paths], axis=0)
            scores.append(dice(mean > threshold * 255, read_mask(sample.mask)))
    return {"mean of sources": float(np.mean(scores)), "refine": oof.pooled_dice(runs)}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``REFINE_DIR --sources A B ...`` prints both pooled OOF Dice scores."""
    parser = argparse.ArgumentParser(prog="python -m carvana.refine", description=__doc__.splitlines()[0])
    parser.add_argument("refine_dir", type=Path, help="the refiner's experiment folder, e.g. outputs/refine")
    parser.add_argument("--sources", type=Path, nargs="+", required=True, help="its data.sources")
    args = parser.parse_args(argv)

    def action() -> str:
        scores = compare(args.refine_dir, args.sources)
        return "\n".join(f"{name} (pooled OOF Dice): {value:.6f}" for name, value in scores.items())

    return report(action)


if __name__ == "__main__":
    sys.exit(main())
