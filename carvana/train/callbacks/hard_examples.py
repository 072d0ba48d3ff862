"""Hard-example replay (1st place, Buslaev's LinkNet): every N steps, once more on the hardest batch."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from carvana.errors import CarvanaError


class HardExampleReplay(pl.Callback):
    """Every ``every`` optimizer steps, one more step on the highest-loss batch since the last replay.

    Works under automatic optimisation, so the module stays as it is: the replay goes through the strategy
    (``training_step`` through the DDP wrapper, so gradients are all-reduced; ``backward`` and
    ``optimizer_step`` through the precision plugin, so AMP scaling and ``trainer.gradient_clip_val`` apply)
    and runs right after a regular optimizer step, so it never mixes into accumulated gradients. The extra
    steps do not count in ``trainer.global_step`` (so per-step LR schedules keep their length); their loss is
    logged into ``train/loss`` like any other step. Under DDP each rank replays its own hardest batch, all at
    the same step. The step of the last replay is saved in checkpoints, so a resumed run replays on schedule.

    Args:
        every: optimizer steps between replays.
    """

    def __init__(self, every: int = 10):
        if every < 1:
            raise CarvanaError(f"callbacks.hard_examples.every={every}: must be at least 1")
        self.every = every
        self._replayed_at = 0
        self._forget()

    def _forget(self) -> None:
        self._batch: Any = None
        self._batch_idx = -1
        self._loss = -math.inf

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every=self.every)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = float(outputs["loss"])
        if loss > self._loss:  # a NaN loss is never kept
            self._batch, self._batch_idx, self._loss = batch, batch_idx, loss
        step = trainer.global_step
        if step % self.every or step == self._replayed_at or self._batch is None:
            return
        self.replay(trainer)
        self._replayed_at = step
        self._forget()

    def replay(self, trainer: pl.Trainer) -> None:
        """One optimizer step on the kept batch."""
        optimizer = trainer.optimizers[0]

        def closure() -> Any:
            optimizer.zero_grad()
            loss = trainer.strategy.training_step(self._batch, self._batch_idx)
            trainer.strategy.backward(loss, optimizer)
            return loss

        trainer.strategy.optimizer_step(optimizer, closure)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"replayed_at": self._replayed_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._replayed_at = state_dict["replayed_at"]
