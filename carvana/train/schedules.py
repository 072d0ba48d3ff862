"""Learning-rate schedules torch lacks, as ``LambdaLR`` factors (picklable, so checkpoints resume them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCyclic:
    """The 1st place's LinkNet-34 schedule (Buslaev), per epoch, as a factor of the base LR.

    Until ``cycle_start``: step decay, ``gamma`` every ``step_epochs``. From then on, cycles of
    ``cycle_epochs`` that restart at the base LR and decay by ``gamma`` every ``cycle_step_epochs`` within
    the cycle; with the defaults 1, 1, 0.1, 0.1, 0.01. Each restart kicks the weights out of the current
    minimum, and the low-LR end of every cycle gives a checkpoint worth keeping.

    Args:
        step_epochs: epochs between decays before the cycles.
        cycle_start: the epoch the first cycle starts.
        cycle_epochs: the length of a cycle.
        cycle_step_epochs: epochs between decays within a cycle.
        gamma: the factor of each decay.
    """

    step_epochs: int = 12
    cycle_start: int = 23
    cycle_epochs: int = 5
    cycle_step_epochs: int = 2
    gamma: float = 0.1

    def __call__(self, epoch: int) -> float:
        if epoch < self.cycle_start:
            return self.gamma ** (epoch // self.step_epochs)
        return self.gamma ** ((epoch - self.cycle_start) % self.cycle_epochs // self.cycle_step_epochs)
