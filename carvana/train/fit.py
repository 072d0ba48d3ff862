"""One fold, end to end: build everything from the composed config, fit (resuming from last.ckpt), predict the
fold's out-of-fold maps, report. The ``train.py`` task.

The out-of-fold pass belongs to the prediction stage: the ``oof`` config node names it, so this module never
imports a later stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from carvana import runs, targets
from carvana.config import build_model, build_trainer, instantiate
from carvana.errors import CarvanaError
from carvana.train.distributed import job_ranks
from carvana.train.loggers import build_logger, wandb_finished

log = logging.getLogger(__name__)


def fold_oof(cfg: DictConfig, trainer: pl.Trainer) -> float | None:
    """The fold's out-of-fold Dice: ``cfg.oof`` (``carvana.predict.oof.predict_oof``) predicts its validation
    cars with its best checkpoint into ``<run>/oof`` on every rank of the fit, with the fit's ``trainer``
    settings, and scores them into ``oof_score.json``; None without a best checkpoint."""
    best = Path(trainer.checkpoint_callback.best_model_path) if trainer.checkpoint_callback else None
    output_dir = Path(cfg.paths.output_dir)
    checkpoints = runs.checkpoint(output_dir).parent
    if best is None or not best.is_file() or best.parent.resolve() != checkpoints.resolve():
        log.warning("no best checkpoint in %s: no out-of-fold maps", checkpoints)
        return None
    return instantiate(cfg.oof)(output_dir, checkpoint=best.name, trainer=cfg.trainer)


def init_weights(module: pl.LightningModule, checkpoint: str) -> None:
    """Start from another run's weights (optimizer and schedule start afresh); plain tensors only, since
    the checkpoint may come from someone else."""
    if not Path(checkpoint).is_file():
        raise CarvanaError(f"init_from={checkpoint}: no such checkpoint")
    state = runs.read_weights(checkpoint)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        model = type(module.net).__name__
        raise CarvanaError(f"init_from={checkpoint}: its weights do not fit this {model}") from error
    log.info("network initialised from %s", checkpoint)


def train(cfg: DictConfig) -> float | None:
    """Train ``cfg.fold`` and return its best ``val/dice`` (the sweep objective)."""
    targets.check(cfg, source="the composed config")
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
    trainer: pl.Trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=logger or False)
    with job_ranks(trainer), wandb_finished(logger):
        if logger is not None:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        last = runs.checkpoint(output_dir, runs.LAST)
        if last.is_file():
            runs.read_weights(last)  # a broken or pickle-carrying last.ckpt: one line, before any work
            log.info("resuming from %s", last)
        elif cfg.get("init_from"):
            init_weights(module, cfg.init_from)
        # plain data only: last.ckpt may have been copied in from someone else's run folder
        resume = last if last.is_file() else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)

        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        oof = fold_oof(cfg, trainer) if cfg.get("oof") else None
        report = {
            "best": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
            "last": last if last.is_file() else None,
            "folds": output_dir / runs.FOLDS,
            "fold score": output_dir / runs.FOLD_SCORE,
            "oof": output_dir / runs.OOF if oof is not None else None,
            "oof score": output_dir / runs.OOF_SCORE if oof is not None else None,
        }
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            if oof is not None:
                logger.experiment.summary["oof/dice"] = oof
            run_dir = Path(logger.experiment.dir).parent
            report["W&B run"] = f"{run_dir}  (upload: wandb sync {run_dir})"
        if trainer.is_global_zero:
            best = f"{float(score):.4f}" if score is not None else "n/a"
            line = f"{cfg.name} fold {cfg.fold}: best val/dice {best}"
            if oof is not None:
                line += f", OOF Dice {oof:.4f} ({'hflip' if cfg.oof.get('hflip', True) else 'no TTA'})"
            lines = [line]
            lines += [f"  {key:<11}{value}" for key, value in report.items() if value]
            print("\n".join(lines))
    return float(score) if score is not None else None
