"""One prediction run: checkpoints -> probability PNGs -> submission.csv (and optionally pseudo-labels).

Rerunning the same command continues an interrupted run: images whose PNG exists are not predicted again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import pytorch_lightning as pl
from omegaconf import DictConfig

from carvana import prediction, pseudo, refine, submission
from carvana.dataset import test_samples
from carvana.errors import CarvanaError
from carvana.instantiate import instantiate
from carvana.writer import PngWriter, made_otherwise, write_manifest

log = logging.getLogger(__name__)


def _sample_submission(cfg: DictConfig, root: Path) -> Path | None:
    if not cfg.get("submission"):
        return None
    sample = Path(cfg.submission.sample or root / "sample_submission.csv")
    if not sample.is_file():
        raise CarvanaError(
            f"{sample}: no sample submission (set submission.sample=..., or submission=null "
            "to write only the PNGs)"
        )
    return sample


def write_submission(cfg: DictConfig, out_dir: Path, sample: Path, first_png: Path) -> Path:
    """submission.csv in sample order, at the threshold and with the post-processing of the config."""
    shape = cv2.imread(str(first_png), cv2.IMREAD_GRAYSCALE).shape
    out = Path(
        cfg.submission.out or out_dir / ("submission.csv.gz" if cfg.submission.compress else "submission.csv")
    )
    postprocess = instantiate(cfg.postprocess) if cfg.get("postprocess") else None
    submission.write(
        out_dir,
        sample,
        out,
        threshold=cfg.threshold,
        postprocess=postprocess,
        subset=cfg.submission.subset,
        workers=cfg.workers,
        compress=cfg.submission.compress,
        shape=shape,
    )
    if cfg.submission.subset:
        log.warning(
            "%s: only the rows with a prediction (submission.subset=true); Kaggle needs them all", out
        )
    else:
        rows = submission.check(out, sample, shape)
        log.info("%s: %d rows, checked against %s", out, rows, sample)
    return out


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.data`` test images with ``cfg.checkpoints`` into ``out_dir``; returns ``out_dir``."""
    members = prediction.members(cfg.checkpoints)
    first = members[0].config
    root = Path(cfg.data.root) if cfg.data.root else prediction.data_root(first)
    out_dir = Path(cfg.out_dir or Path("predictions") / (cfg.name or members[0].run_dir.parent.name))
    sample = _sample_submission(cfg, root)
    samples = test_samples(root, cfg.data.images_dir)
    manifest = {
        **prediction.describe(members, cfg.tta.hflip, "predict"),
        "data": str((root / cfg.data.images_dir).resolve()),
        "threshold": cfg.threshold,
    }
    if made_otherwise(out_dir, manifest):
        raise CarvanaError(
            f"{out_dir} already holds predictions of other checkpoints, weights, TTA or geometry "
            "(see its manifest.json); set out_dir to a new folder or delete that one"
        )

    module = prediction.PredictionModule.from_members(members, hflip=cfg.tta.hflip)
    writer = PngWriter(out_dir, threads=cfg.writer_threads)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(out_dir),
    )
    since = max(member.checkpoint.stat().st_mtime for member in members)
    sources = [Path(source) for source in cfg.data.get("sources") or []]
    prediction.predict_missing(
        trainer,
        module,
        samples,
        writer,
        since,
        cfg.data.batch_size,
        cfg.data.num_workers,
        maps=(lambda todo: refine.test_maps(sources, todo)) if sources else None,
    )
    if not trainer.is_global_zero:
        return out_dir

    lines = [f"{out_dir}: {len(samples)} probability maps of {len(members)} checkpoint(s)"]
    if write_manifest(out_dir, samples, manifest):
        if sample is not None:
            first_png = out_dir / f"{samples[0].image_id}.png"
            lines.append(f"  submission {write_submission(cfg, out_dir, sample, first_png)}")
        if cfg.pseudo.enabled:
            pseudo_root = Path(cfg.pseudo.out_root or f"{out_dir}_pseudo")
            kept = pseudo.select_and_write(
                out_dir,
                root / cfg.data.images_dir,
                pseudo_root,
                cfg.pseudo.max_uncertain,
                cfg.threshold,
                cfg.workers,
            )
            lines.append(f"  pseudo     {pseudo_root} ({len(kept)} images)")
    print("\n".join(lines))
    return out_dir
