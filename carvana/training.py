"""One fold, end to end: build everything from the composed config, fit (resuming from last.ckpt), report."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from carvana.errors import CarvanaError
from carvana.instantiate import build_model, instantiate
from carvana.io import atomic_write_text

log = logging.getLogger(__name__)


def wandb_id(output_dir: Path) -> str:
    """The run folder's W&B id, created once, so that a resumed fold logs into the same W&B run."""
    path = output_dir / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


def build_logger(cfg: DictConfig | None, output_dir: Path) -> Logger | None:
    if not cfg:
        return None
    return instantiate(cfg, id=wandb_id(output_dir)) if "id" in cfg else instantiate(cfg)


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
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
    elif cfg.get("init_from"):
        init_weights(module, cfg.init_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=last if last.is_file() else None)

    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    report = {
        "best": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
        "last": last if last.is_file() else None,
        "folds": output_dir / "folds.csv",
        "fold score": output_dir / "fold_score.json",
    }
    if isinstance(logger, WandbLogger) and trainer.is_global_zero:
        run_dir = Path(logger.experiment.dir).parent
        report["W&B run"] = f"{run_dir}  (upload: wandb sync {run_dir})"
        logger.experiment.finish()
    if trainer.is_global_zero:
        best = f"{float(score):.4f}" if score is not None else "n/a"
        lines = [f"{cfg.name} fold {cfg.fold}: best val/dice {best}"]
        lines += [f"  {key:<11}{value}" for key, value in report.items() if value]
        print("\n".join(lines))
    return float(score) if score is not None else None
