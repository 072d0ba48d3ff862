"""Out-of-fold predictions and scores: each fold's validation cars predicted by that fold's own model.

``predict_oof(run_dir)`` writes ``<run>/oof/<image_id>.zst`` (8-bit probabilities at the original
resolution, hflip TTA by default) and ``<run>/oof_score.json``: the mean per-image Dice of those files
against the true masks, computed with numpy exactly as Kaggle scores (1 when both masks are empty).
``pooled_dice(run_dirs)`` is the cross-validation score: the mean over every OOF image of every fold.

    carvana oof outputs/linknet34/fold0 outputs/linknet34/fold1 ...
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from carvana import runs
from carvana.config import load_run_config
from carvana.data.datasets import oof_maps
from carvana.data.kaggle import Sample, read_mask, train_samples
from carvana.errors import CarvanaError, check_shape, run_command
from carvana.metrics import dice
from carvana.predict.checkpoints import data_root, describe, members
from carvana.predict.map_writer import MapWriter
from carvana.predict.prediction_module import PredictionModule, predict_missing, prediction_trainer
from carvana.progress import track

log = logging.getLogger(__name__)


def validation_samples(run_dir: str | Path) -> list[Sample]:
    """The run's validation images (with masks): the cars its ``folds.csv`` puts in its ``fold``."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    table_path = run_dir / runs.FOLDS
    if not table_path.is_file():
        raise CarvanaError(f"{run_dir}: no {runs.FOLDS} (is it a training run folder?)")
    table = runs.read_folds(table_path)
    samples = train_samples(data_root(config), config.data.images_dir)
    unknown = sorted({sample.car for sample in samples} - set(table))
    if unknown:
        raise CarvanaError(f"{table_path}: car {unknown[0]} of the run's data is not in it")
    val = [sample for sample in samples if table[sample.car] == config.fold]
    if not val:
        raise CarvanaError(f"{table_path}: no car in fold {config.fold}")
    return val


def _score(sample: Sample, files: dict[str, Path], oof_dir: Path, cutoff: int) -> float:
    path = files.get(sample.image_id)
    if path is None:
        raise CarvanaError(
            f"{runs.map_path(oof_dir, sample.image_id)}: missing (run carvana oof {oof_dir.parent} first)"
        )
    prob = runs.read_map(path)
    assert sample.mask is not None
    truth = read_mask(sample.mask)
    check_shape(sample.image_id, path, prob.shape, truth.shape, f"the size of its mask {sample.mask}")
    return dice(prob > np.uint8(cutoff), truth)


def score_fold(run_dir: str | Path, threshold: float = 0.5, write: bool = True) -> float:
    """Mean per-image Dice of ``<run>/oof`` (mask = map > threshold*255, as in the submission).

    With ``write``, ``oof_score.json`` keeps the mean and every image's Dice, for ``pooled_dice``.
    """
    run_dir = Path(run_dir)
    samples = validation_samples(run_dir)
    cutoff = math.floor(threshold * 255)
    oof_dir = run_dir / runs.OOF
    files = runs.map_files(oof_dir) if oof_dir.is_dir() else {}
    with ThreadPoolExecutor(4) as pool:  # map and GIF decoding release the GIL
        scored = pool.map(lambda sample: _score(sample, files, oof_dir, cutoff), samples)
        dices = list(track(scored, len(samples), f"scoring {run_dir / runs.OOF}"))
    score = float(np.mean(dices))
    if write:
        record = {
            "fold": int(load_run_config(run_dir).fold),
            "dice": score,
            "images": len(samples),
            "threshold": threshold,
            "per_image": dict(zip((s.image_id for s in samples), dices, strict=True)),
        }
        runs.write_json(run_dir / runs.OOF_SCORE, record)
    return score


def predict_oof(
    run_dir: str | Path,
    checkpoint: str = runs.BEST,
    hflip: bool = True,
    batch_size: int = 2,
    num_workers: int = 2,
    trainer: DictConfig | None = None,
    writer_threads: int = 2,
    **trainer_overrides: Any,
) -> float:
    """Predict a fold's validation images with its checkpoint into ``<run>/oof`` and score them.

    ``trainer`` is a ``trainer`` config node (the fit's own, when training calls this), by default the one
    the run was trained with; ``trainer_overrides`` replace its settings (``accelerator="cpu"``...);
    ``writer_threads`` encode the maps beside the accelerator (predict.py's ``writer_threads``). Maps
    already there and newer than the checkpoint are kept; after another checkpoint or TTA all are predicted
    again. Every rank returns the score; global rank 0 writes ``oof_score.json`` and ``oof/manifest.json``.
    """
    run_dir = Path(run_dir)
    group = members(str(runs.checkpoint(run_dir, checkpoint)))
    config = group[0].config
    samples = validation_samples(run_dir)
    oof_dir = run_dir / runs.OOF
    manifest = describe(group, hflip, "oof")
    stale = runs.made_otherwise(oof_dir, manifest)
    since = time.time() if stale else group[0].checkpoint.stat().st_mtime

    writer = MapWriter(oof_dir, threads=writer_threads)
    pl_trainer = prediction_trainer(
        config.trainer if trainer is None else trainer, writer, run_dir, **trainer_overrides
    )
    module = PredictionModule.from_members(group, hflip=hflip)
    sources = [Path(source) for source in config.data.get("sources") or []]
    table = runs.read_folds(run_dir / runs.FOLDS)
    maps = (lambda todo: oof_maps(sources, todo, table)) if sources else None
    predict_missing(pl_trainer, module, samples, writer, since, batch_size, num_workers, maps)
    if not pl_trainer.is_global_zero:
        return score_fold(run_dir, write=False)
    runs.write_manifest(oof_dir, samples, manifest, writer.format)
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
        path = run_dir / runs.OOF_SCORE
        if not path.is_file():
            raise CarvanaError(f"{run_dir}: no {runs.OOF_SCORE} (run carvana oof {run_dir} first)")
        per_image = runs.read_json(path)["per_image"]
        for image_id, value in per_image.items():
            if image_id in owner:
                raise CarvanaError(f"{image_id} is out-of-fold in both {owner[image_id]} and {run_dir}")
            owner[image_id] = run_dir
            dices.append(value)
    return float(np.mean(dices))


def main(argv: list[str] | None = None) -> int:
    """CLI: OOF maps and score of each run folder, then the pooled Dice; exit status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="carvana oof", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", help="training run folders, e.g. outputs/linknet34/fold0"
    )
    parser.add_argument("--checkpoint", default=runs.BEST, help=f"file name under <run>/{runs.CHECKPOINTS}")
    parser.add_argument("--tta", choices=("hflip", "none"), default="hflip")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--writer-threads", type=int, default=2, help="map encoding threads")
    trainer = parser.add_argument_group("trainer", "the run's own trainer settings unless given")
    trainer.add_argument("--accelerator", help="cpu, gpu or auto")
    trainer.add_argument("--devices", help="e.g. 1, 2 or auto")
    trainer.add_argument("--strategy", help="e.g. auto or ddp")
    trainer.add_argument("--precision", help="e.g. 32-true, or bf16-mixed on GPUs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    overrides = {
        key: int(value) if key == "devices" and value.isdigit() else value
        for key in ("accelerator", "devices", "strategy", "precision")
        if (value := getattr(args, key)) is not None
    }

    def action() -> str | None:
        scores = {
            run_dir: predict_oof(
                run_dir,
                args.checkpoint,
                args.tta == "hflip",
                args.batch_size,
                args.num_workers,
                writer_threads=args.writer_threads,
                **overrides,
            )
            for run_dir in args.run_dirs
        }
        if rank_zero_only.rank != 0:  # under DDP every rank runs this; rank 0 wrote the scores
            return None
        pooled = pooled_dice(args.run_dirs)
        lines = [f"{run_dir}: OOF Dice {score:.6f}" for run_dir, score in scores.items()]
        return "\n".join([*lines, f"pooled OOF Dice {pooled:.6f} over {len(scores)} run(s)"])

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
