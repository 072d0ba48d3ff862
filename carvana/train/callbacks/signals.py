"""Pre-emption: SIGTERM or SIGUSR1 saves the resume point before the process exits."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from typing_extensions import override

log = logging.getLogger(__name__)


class SignalCheckpoint(pl.Callback):
    """Save ``path`` (the run's ``last.ckpt``) when SIGTERM or SIGUSR1 stops training, then exit.

    Lightning turns SIGTERM into a stop at the next batch boundary (``SIGTERMException``); this saves the
    checkpoint there, between optimizer steps, so the resumed run continues mid-epoch in the same batch order
    (``carvana.data.sampling``). SIGUSR1, SLURM's advance warning (``#SBATCH --signal=USR1@90``), is handled
    the same way unless Lightning's SLURM auto-requeue already handles it.

    Args:
        path: where to save; the path training resumes from.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self._previous: Any = None

    @staticmethod
    def _as_sigterm(signum: int, frame: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # Lightning's handlers are set by now
            self._previous = signal.signal(signal.SIGUSR1, self._as_sigterm)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
            log.warning("stopped by a signal at step %d: saved %s", trainer.global_step, self.path)
