"""One fold, end to end: build everything from the composed config, fit (resuming from last.ckpt), predict the
fold's out-of-fold maps, report."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from carvana.dataset import OOF_DIR
from carvana.distributed import job_ranks
from carvana.errors import CarvanaError
from carvana.instantiate import build_model, instantiate
from carvana.io import atomic_write_text
from carvana.oof import SCORE, predict_oof

log = logging.getLogger(__name__)


# What the OOF pass takes over from the fit's trainer: the same devices, ranks and precision.
HARDWARE = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def wandb_id(folder: Path) -> str:
    """The folder's W&B id, created once, so that a resumed (or requeued) fold logs into the same W&B run.

    A new id is the one a W&B sweep agent chose for this run (``WANDB_RUN_ID``) if any: W&B ignores ours then.
    """
    path = folder / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


def build_logger(cfg: DictConfig | None, output_dir: Path) -> Logger | None:
    """The experiment logger; only rank 0 (which alone logs) reads or creates the W&B id, so that ranks that
    start together (SLURM tasks) cannot each write an id of their own."""
    if not cfg:
        return None
    if "id" in cfg and rank_zero_only.rank == 0:
        return instantiate(cfg, id=wandb_id(output_dir))
    return instantiate(cfg)


@contextmanager
def wandb_finished(logger: Logger | None) -> Iterator[None]:
    """Finish this process's W&B run however the fold ends, a crash included, so that the next job of a
    multirun (same process) opens a run of its own instead of logging into this one."""
    if not isinstance(logger, WandbLogger):
        yield
        return
    import wandb

    try:
        yield
    except BaseException:
        wandb.finish(exit_code=1)
        raise
    wandb.finish()


def hardware(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The fit trainer's devices, strategy and precision as ``pl.Trainer`` arguments."""
    kwargs = {key: trainer_cfg[key] for key in HARDWARE if key in trainer_cfg}
    for key, value in kwargs.items():
        if OmegaConf.is_dict(value):  # a strategy object from config: the OOF trainer gets one of its own
            kwargs[key] = instantiate(value)
        elif OmegaConf.is_list(value):  # devices: [0, 1]
            kwargs[key] = OmegaConf.to_container(value, resolve=True)
    return kwargs


def fold_oof(cfg: DictConfig, trainer: pl.Trainer) -> float | None:
    """The fold's out-of-fold Dice: its validation cars predicted by its best checkpoint (hflip TTA) into
    ``<run>/oof`` on every rank of the fit, scored into ``oof_score.json``; None without a best checkpoint."""
    best = Path(trainer.checkpoint_callback.best_model_path) if trainer.checkpoint_callback else None
    output_dir = Path(cfg.paths.output_dir)
    if best is None or not best.is_file() or best.parent.resolve() != (output_dir / "checkpoints").resolve():
        log.warning("no best checkpoint in %s: no out-of-fold maps", output_dir / "checkpoints")
        return None
    return predict_oof(
        output_dir,
        checkpoint=best.name,
        hflip=True,
        batch_size=cfg.data.val_batch_size,
        num_workers=cfg.data.num_workers,
        **hardware(cfg.trainer),
    )


def init_weights(module: pl.LightningModule, checkpoint: str) -> None:
    """Start from another run's weights (optimizer and schedule start afresh)."""
    if not Path(checkpoint).is_file():
        raise CarvanaError(f"init_from={checkpoint}: no such checkpoint")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        model = type(module.net).__name__
        raise CarvanaError(f"init_from={checkpoint}: its weights do not fit this {model}") from error
    log.info("network initialised from %s", checkpoint)


def train(cfg: DictConfig) -> float | None:
    """Train ``cfg.fold`` and return its best ``val/dice`` (the sweep objective)."""
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    module = instantiate(
        cfg.module,
        net=build_model(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    logger = build_logger(cfg.get("logger"), output_dir)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger or False)
    with job_ranks(trainer), wandb_finished(logger):
        if logger is not None:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
        elif cfg.get("init_from"):
            init_weights(module, cfg.init_from)
        trainer.fit(module, datamodule=datamodule, ckpt_path=last if last.is_file() else None)

        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        oof = fold_oof(cfg, trainer) if cfg.get("oof") else None
        report = {
            "best": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
            "last": last if last.is_file() else None,
            "folds": output_dir / "folds.csv",
            "fold score": output_dir / "fold_score.json",
            "oof": output_dir / OOF_DIR if oof is not None else None,
            "oof score": output_dir / SCORE if oof is not None else None,
        }
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            if oof is not None:
                logger.experiment.summary["oof/dice"] = oof
            run_dir = Path(logger.experiment.dir).parent
            report["W&B run"] = f"{run_dir}  (upload: wandb sync {run_dir})"
        if trainer.is_global_zero:
            best = f"{float(score):.4f}" if score is not None else "n/a"
            line = f"{cfg.name} fold {cfg.fold}: best val/dice {best}"
            lines = [line + (f", OOF Dice {oof:.4f} (hflip)" if oof is not None else "")]
            lines += [f"  {key:<11}{value}" for key, value in report.items() if value]
            print("\n".join(lines))
    return float(score) if score is not None else None
