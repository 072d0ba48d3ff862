"""Lightning callbacks of the training stage."""

from carvana.train.callbacks.finite_loss import FiniteLoss
from carvana.train.callbacks.fold_score import FoldScore
from carvana.train.callbacks.hard_examples import HardExampleReplay
from carvana.train.callbacks.signals import SignalCheckpoint
from carvana.train.callbacks.wandb_validation import WandbValidation

__all__ = ["FiniteLoss", "FoldScore", "HardExampleReplay", "SignalCheckpoint", "WandbValidation"]
