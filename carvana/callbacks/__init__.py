"""Lightning callbacks of the training stage."""

from carvana.callbacks.fold_score import FoldScore
from carvana.callbacks.hard_examples import HardExampleReplay
from carvana.callbacks.wandb_validation import WandbValidation

__all__ = ["FoldScore", "HardExampleReplay", "WandbValidation"]
