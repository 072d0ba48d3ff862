"""One prediction run, the ``predict.py`` task: checkpoints -> probability maps -> what comes after them.

Rerunning the same command continues an interrupted run: images whose map exists are not predicted again.
Once every map is written, the ``submission`` step (``carvana.submit.submission.SubmissionStep``) and the
``pseudo`` step (``carvana.submit.pseudo.PseudoLabelStep``) run as the config names them, so this stage
never imports the submission stage.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from carvana import runs
from carvana.config import instantiate
from carvana.data.datasets import test_maps
from carvana.data.kaggle import test_samples
from carvana.errors import CarvanaError
from carvana.predict.checkpoints import data_root, describe, members
from carvana.predict.map_writer import MapWriter
from carvana.predict.prediction_module import PredictionModule, predict_missing, prediction_trainer
from carvana.train.callbacks import Heartbeat

POSTPROCESS_TARGET = "carvana.submit.postprocess.PostProcess"


def use_selection(cfg: DictConfig) -> None:
    """``ensemble=FILE``: ``checkpoints``, ``threshold`` and ``postprocess`` from a ``carvana select`` file.
    Each experiment's weight is shared by its folds' best checkpoints; an experiment of weight 0 is left out.
    """
    path = Path(cfg.ensemble)
    if not OmegaConf.is_missing(cfg, "checkpoints"):
        raise CarvanaError(f"ensemble={path} names the checkpoints: drop checkpoints=")
    record = runs.read_selection(path)
    entries = []
    for experiment, weight in zip(record["experiments"], record["weights"], strict=True):
        folds = sorted(Path(experiment).glob(f"fold*/{runs.CHECKPOINTS}/{runs.BEST}"))
        if weight > 0 and not folds:
            raise CarvanaError(f"{path}: {experiment} has no fold*/{runs.CHECKPOINTS}/{runs.BEST}")
        entries += [{"path": str(fold), "weight": weight / len(folds)} for fold in folds if weight > 0]
    with open_dict(cfg):
        cfg.checkpoints = entries
        cfg.threshold = record["threshold"]
        cfg.postprocess = {"_target_": POSTPROCESS_TARGET, **record["postprocess"]}


def predict_first_stage(cfg: DictConfig) -> None:
    """``first_stage=GLOB``: its checkpoints' test maps first (continued when already there), in the folder
    a plain run of them writes, then read as the second stage's one ``data.sources`` entry."""
    first = cfg.copy()
    with open_dict(first):
        first.checkpoints, first.first_stage, first.ensemble = cfg.first_stage, None, None
        first.name = first.out_dir = first.submission = first.pseudo = None
        first.data.sources = None
    out_dir = predict(first)
    with open_dict(cfg):
        cfg.data.sources = [str(out_dir)]
        cfg.first_stage = None


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.data`` test images with ``cfg.checkpoints`` into ``out_dir``; returns ``out_dir``."""
    if cfg.get("ensemble"):
        use_selection(cfg)
    if cfg.get("first_stage"):
        predict_first_stage(cfg)
    group = members(cfg.checkpoints)
    root = Path(cfg.data.root) if cfg.data.root else data_root(group[0].config)
    out_dir = Path(cfg.out_dir or Path("predictions") / (cfg.name or runs.experiment_of(group[0].run_dir)))
    submission = instantiate(cfg.submission) if cfg.get("submission") else None
    pseudo = instantiate(cfg.pseudo) if cfg.get("pseudo") else None
    if submission is not None:
        submission.sample_path(root)  # a missing sample submission fails now, not after hours of prediction
    images_dir = root / cfg.data.images_dir
    samples = test_samples(root, cfg.data.images_dir)
    manifest = {
        **describe(group, cfg.tta.hflip, "predict"),
        "data": str(images_dir.resolve()),
        "threshold": cfg.threshold,
    }
    runs.refuse_made_otherwise(out_dir, manifest)

    module = PredictionModule.from_members(group, hflip=cfg.tta.hflip)
    writer = MapWriter(out_dir, threads=cfg.writer_threads, fmt=cfg.map_format)
    # carvana status: the folder's progress, and what it will hold, before its manifest exists
    info = {"images": len(samples), "checkpoints": manifest["checkpoints"]}
    trainer = prediction_trainer(
        cfg.trainer, writer, out_dir, [Heartbeat(out_dir / runs.HEARTBEAT, info=info)]
    )
    since = max(member.checkpoint.stat().st_mtime for member in group)
    sources = [Path(source) for source in cfg.data.get("sources") or []]
    maps = (lambda todo: test_maps(sources, todo)) if sources else None
    predict_missing(trainer, module, samples, writer, since, cfg.data.batch_size, cfg.data.num_workers, maps)
    if not trainer.is_global_zero:
        return out_dir

    lines = [f"{out_dir}: {len(samples)} probability maps of {len(group)} checkpoint(s)"]
    if runs.write_manifest(out_dir, samples, manifest, writer.format):
        if submission is not None:
            lines.append(submission(out_dir, root, samples[0].image_id))
        if pseudo is not None:
            lines.append(pseudo(out_dir, images_dir))
    print("\n".join(lines))
    return out_dir
