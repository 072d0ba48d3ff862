"""The fold's experiment logger: W&B resumes the fold's own run, and every run is finished however it ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from carvana import runs
from carvana.config import instantiate


def build_logger(cfg: DictConfig | None, output_dir: Path) -> Logger | None:
    """The experiment logger; only rank 0 (which alone logs) reads or creates the W&B id, so that ranks that
    start together (SLURM tasks) cannot each write an id of their own."""
    if not cfg:
        return None
    if "id" in cfg and rank_zero_only.rank == 0:
        return instantiate(cfg, id=runs.wandb_id(output_dir))
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
