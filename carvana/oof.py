"""Out-of-fold predictions and scores: each fold's validation cars predicted by that fold's own model.

``predict_oof(run_dir)`` writes ``<run>/oof/<image_id>.png`` (8-bit probabilities at the original
resolution, hflip TTA by default) and ``<run>/oof_score.json``: the mean per-image Dice of those files
against the true masks, computed with numpy exactly as Kaggle scores (1 when both masks are empty).
``pooled_dice(run_dirs)`` is the cross-validation score: the mean over every OOF image of every fold.

    python -m carvana.oof outputs/linknet34/fold0 outputs/linknet34/fold1 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from carvana import folds, prediction
from carvana.dataset import OOF_DIR, Sample, read_mask, train_samples
from carvana.errors import CarvanaError, check_files, report
from carvana.io import atomic_write_text
from carvana.postprocess import dice
from carvana.writer import PngWriter, made_otherwise, write_manifest

log = logging.getLogger(__name__)

SCORE = "oof_score.json"


def validation_samples(run_dir: str | Path) -> list[Sample]:
    """The run's validation images (with masks): the cars its ``folds.csv`` puts in its ``fold``."""
    run_dir = Path(run_dir)
    config = prediction.run_config(run_dir)
    table_path = run_dir / "folds.csv"
    if not table_path.is_file():
        raise CarvanaError(f"{run_dir}: no folds.csv (is it a training run folder?)")
    table = folds.read(table_path)
    samples = train_samples(prediction.data_root(config), config.data.images_dir)
    unknown = sorted({sample.car for sample in samples} - set(table))
    if unknown:
        raise CarvanaError(f"{table_path}: car {unknown[0]} of the run's data is not in it")
    val = [sample for sample in samples if table[sample.car] == config.fold]
    if not val:
        raise CarvanaError(f"{table_path}: no car in fold {config.fold}")
    return val


def oof_maps(
    sources: Sequence[Path], samples: Sequence[Sample], table: Mapping[str, int]
) -> list[list[Path]]:
    """For each sample, its out-of-fold map from each source: the source's run of the car's own fold."""
    maps = [
        [source / f"fold{table[s.car]}" / OOF_DIR / f"{s.image_id}.png" for source in sources]
        for s in samples
    ]
    return check_files(maps, "out-of-fold map (run the sources' OOF step)")


def _score(sample: Sample, oof_dir: Path, cutoff: int) -> float:
    png = oof_dir / f"{sample.image_id}.png"
    prob = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    if prob is None:
        raise CarvanaError(f"{png}: missing or unreadable (run predict_oof first)")
    assert sample.mask is not None
    truth = read_mask(sample.mask)
    if prob.shape != truth.shape:
        raise CarvanaError(
            f"{png} is {prob.shape[1]}x{prob.shape[0]}, its mask {sample.mask} is "
            f"{truth.shape[1]}x{truth.shape[0]}"
        )
    return dice(prob > np.uint8(cutoff), truth)


def score_fold(run_dir: str | Path, threshold: float = 0.5, write: bool = True) -> float:
    """Mean per-image Dice of ``<run>/oof`` (mask = PNG > threshold*255, as in the submission).

    With ``write``, ``oof_score.json`` keeps the mean and every image's Dice, for ``pooled_dice``.
    """
    run_dir = Path(run_dir)
    samples = validation_samples(run_dir)
    cutoff = math.floor(threshold * 255)
    with ThreadPoolExecutor(4) as pool:  # PNG and GIF decoding release the GIL
        dices = list(pool.map(lambda sample: _score(sample, run_dir / OOF_DIR, cutoff), samples))
    score = float(np.mean(dices))
    if write:
        record = {
            "fold": int(prediction.run_config(run_dir).fold),
            "dice": score,
            "images": len(samples),
            "threshold": threshold,
            "per_image": dict(zip((s.image_id for s in samples), dices, strict=True)),
        }
        atomic_write_text(run_dir / SCORE, json.dumps(record, indent=2) + "\n")
    return score


def predict_oof(
    run_dir: str | Path,
    checkpoint: str = "best.ckpt",
    hflip: bool = True,
    batch_size: int = 2,
    num_workers: int = 2,
    **trainer_kwargs: Any,
) -> float:
    """Predict a fold's validation images with its checkpoint into ``<run>/oof`` and score them.

    ``trainer_kwargs`` go to ``pl.Trainer`` (accelerator, devices, strategy, precision...). Maps already
    there and newer than the checkpoint are kept; after another checkpoint or TTA all are predicted again.
    Every rank returns the score; global rank 0 writes ``oof_score.json`` and ``oof/manifest.json``.
    """
    run_dir = Path(run_dir)
    members = prediction.members(str(run_dir / "checkpoints" / checkpoint))
    samples = validation_samples(run_dir)
    oof_dir = run_dir / OOF_DIR
    manifest = prediction.describe(members, hflip, "oof")
    stale = made_otherwise(oof_dir, manifest)
    since = time.time() if stale else members[0].checkpoint.stat().st_mtime

    writer = PngWriter(oof_dir)
    callbacks = [writer, *trainer_kwargs.pop("callbacks", [])]
    trainer = pl.Trainer(
        **{
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            **trainer_kwargs,
            "callbacks": callbacks,
        }
    )
    module = prediction.PredictionModule.from_members(members, hflip=hflip)
    sources = [Path(source) for source in members[0].config.data.get("sources") or []]
    table = folds.read(run_dir / "folds.csv")
    maps = (lambda todo: oof_maps(sources, todo, table)) if sources else None
    prediction.predict_missing(trainer, module, samples, writer, since, batch_size, num_workers, maps)
    if not trainer.is_global_zero:
        return score_fold(run_dir, write=False)
    write_manifest(oof_dir, samples, manifest)
    return score_fold(run_dir)


def pooled_dice(run_dirs: Sequence[str | Path]) -> float:
    """The CV score: mean per-image Dice over the OOF images of all ``run_dirs`` (their ``oof_score.json``).

    Each image counts once: an image in two runs' OOF (the same fold twice, or two experiments) is an error.
    """
    if not run_dirs:
        raise CarvanaError("no run folder to pool")
    owner: dict[str, Path] = {}
    dices: list[float] = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / SCORE
        if not path.is_file():
            raise CarvanaError(f"{run_dir}: no {SCORE} (run python -m carvana.oof {run_dir} first)")
        per_image = json.loads(path.read_text())["per_image"]
        for image_id, value in per_image.items():
            if image_id in owner:
                raise CarvanaError(f"{image_id} is out-of-fold in both {owner[image_id]} and {run_dir}")
            owner[image_id] = run_dir
            dices.append(value)
    return float(np.mean(dices))


def main(argv: list[str] | None = None) -> int:
    """CLI: OOF maps and score of each run folder, then the pooled Dice; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m carvana.oof", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", help="training run folders, e.g. outputs/linknet34/fold0"
    )
    parser.add_argument("--checkpoint", default="best.ckpt", help="file name under <run>/checkpoints")
    parser.add_argument("--tta", choices=("hflip", "none"), default="hflip")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto", help="e.g. 1, 2 or auto")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on GPUs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    devices = int(args.devices) if args.devices.isdigit() else args.devices

    def action() -> str | None:
        scores = {
            run_dir: predict_oof(
                run_dir,
                args.checkpoint,
                args.tta == "hflip",
                args.batch_size,
                args.num_workers,
                accelerator=args.accelerator,
                devices=devices,
                precision=args.precision,
            )
            for run_dir in args.run_dirs
        }
        if rank_zero_only.rank != 0:  # under DDP every rank runs this; rank 0 wrote the scores
            return None
        pooled = pooled_dice(args.run_dirs)
        lines = [f"{run_dir}: OOF Dice {score:.6f}" for run_dir, score in scores.items()]
        return "\n".join([*lines, f"pooled OOF Dice {pooled:.6f} over {len(scores)} run(s)"])

    return report(action)


if __name__ == "__main__":
    sys.exit(main())
