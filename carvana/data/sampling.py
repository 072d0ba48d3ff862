"""The training order: a function of (seed, epoch) alone, so runs repeat and a killed run resumes mid-epoch.

Each epoch's permutation and each position's augmentation draw come from ``numpy``'s ``SeedSequence([seed,
epoch])``: the same with or without DataLoader workers (which would otherwise each draw from a generator of
their own), and the same for a run resumed from a checkpoint saved inside an epoch, which skips the positions
its checkpoint had already trained on. The sampler yields ``(index, draw)`` keys; ``CarvanaDataset`` seeds
its transforms with ``draw``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler


class EpochOrder(Sampler[tuple[int, int]]):
    """A seeded shuffle whose epochs are counted by its own iterations (one per epoch, as Lightning makes
    them), so it needs no ``set_epoch`` call, whose timing varies between a fresh and a resumed run.

    Args:
        size: the dataset's length.
        seed: the run's seed.
        epoch: the epoch of the first iteration.
        skip: positions of that first epoch already trained on (a resumed run); later epochs start at 0.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, skip: int = 0):
        self.size, self.seed = size, seed
        self.epoch, self.skip = epoch - 1, skip  # epoch: the one being iterated, one less before the first

    def __len__(self) -> int:
        return self.size

    def keys(self, epoch: int) -> list[tuple[int, int]]:
        """Every ``(index, draw)`` of an epoch, in order."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        order = rng.permutation(self.size)
        draws = rng.integers(0, 2**32, size=self.size, dtype=np.uint64)
        return list(zip(order.tolist(), draws.tolist(), strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.epoch += 1
        skip, self.skip = self.skip, 0
        yield from self.keys(self.epoch)[skip:]


class OrderedLoader(DataLoader):
    """The training loader over an ``EpochOrder``: resumable mid-epoch, which Lightning recognises by these
    two methods. Its own state is empty: the order resumes from the data module's checkpointed state, which
    counts the batches Lightning trained on rather than those the loader had prefetched."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore here (see the class)."""
