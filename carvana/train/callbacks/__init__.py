"""Lightning callbacks of the training stage."""

from carvana.train.callbacks.budget import WarmupCosineLR
from carvana.train.callbacks.ema import EMA
from carvana.train.callbacks.epoch_lines import EpochLines
from carvana.train.callbacks.finite_loss import FiniteLoss
from carvana.train.callbacks.fold_score import FoldScore
from carvana.train.callbacks.hard_examples import HardExampleReplay
from carvana.train.callbacks.heartbeat import Heartbeat
from carvana.train.callbacks.memory_format import ChannelsLast
from carvana.train.callbacks.progressive_resize import ProgressiveResize
from carvana.train.callbacks.signals import SignalCheckpoint
from carvana.train.callbacks.wandb_validation import WandbValidation

__all__ = [
    "EMA",
    "ChannelsLast",
    "EpochLines",
    "FiniteLoss",
    "FoldScore",
    "HardExampleReplay",
    "Heartbeat",
    "ProgressiveResize",
    "SignalCheckpoint",
    "WandbValidation",
    "WarmupCosineLR",
]
