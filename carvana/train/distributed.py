"""DDP inside a Hydra multirun: each job's ranks run that job, not the sweep again.

Lightning starts a DDP job's other ranks by running the command line again with ``LOCAL_RANK`` set. Under
``python train.py -m ...`` that command line is the whole sweep, so every child would start a sweep of its own
(facebookresearch/hydra#2070; Lightning-AI/pytorch-lightning#18175 is still open). ``job_ranks`` gives the
children this job's command instead: its overrides in single-run mode, writing into the job's folder. When
the job ends it clears the process group and the rendezvous variables, so that the next job of the sweep
starts ranks of its own.

Where ranks come from elsewhere (SLURM's tasks under ``hydra/launcher=slurm``, ``torchrun``) nothing changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from carvana.errors import CarvanaError

# What Lightning's launcher puts into the environment of the process that starts the ranks.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def starts_ranks(trainer: pl.Trainer) -> bool:
    """Whether fitting with ``trainer`` makes Lightning start the other ranks by rerunning the command."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    )


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def job_ranks(trainer: pl.Trainer) -> Iterator[None]:
    """Around one job's fit and OOF pass: under a multirun, the ranks Lightning starts run only this job."""
    if not (_in_multirun() and starts_ranks(trainer)):
        yield
        return
    hydra = HydraConfig.get()
    import __main__

    if __main__.__spec__ is not None:  # a job runner such as submitit's, not train.py: nothing to rerun
        launcher = hydra.runtime.choices.get("hydra/launcher")
        raise CarvanaError(
            f"{trainer.world_size}-process DDP under hydra/launcher={launcher}: Lightning cannot start the "
            "other ranks of a job run by this launcher; sweep with the basic launcher "
            "(python train.py -m ...), or with hydra/launcher=slurm, where SLURM starts one task per GPU"
        )
    argv = sys.argv
    environ = {key: os.environ.get(key) for key in RENDEZVOUS}
    sys.argv = [
        argv[0],
        *hydra.overrides.task,
        "hydra.mode=RUN",
        f"hydra.job.num={hydra.job.num}",  # a name such as optuna's trial${hydra:job.num} resolves alike
        f"paths.output_dir={hydra.runtime.output_dir}",
    ]
    try:
        yield
    finally:
        sys.argv = argv
        for key, value in environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
