"""Training batches per epoch, reproducible from (seed, epoch) and resumable mid-epoch.

Wraps a training DataLoader from ``gcrepro.data.build_loader``, whose sampler shuffles and whose
dataset flips from (seed, epoch[, index]) only. For each epoch :meth:`EpochBatches.iterate` calls
``gcrepro.data.set_epoch(loader, epoch, start_iter)`` (a resumed run skips the batches already
trained on without loading them) and reseeds the loader's own generator (data-worker base seeds)
from (seed, epoch). Nothing here draws from the global RNGs, so the model's RNG stream (RPN / RoI
sampling) is the same whether a run was resumed or not.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class EpochBatches:
    """Per-epoch iteration over a training DataLoader."""

    def __init__(self, loader: DataLoader, *, seed: int) -> None:
        self.loader = loader
        self.seed = seed

    def __len__(self) -> int:
        """Batches (iterations) in one epoch."""
        return len(self.loader.batch_sampler)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Batches ``start, start + 1, ...`` of ``epoch``."""
        from gcrepro.data import set_epoch
        from gcrepro.data.seeding import WORKER_STREAM, derive_seed

        set_epoch(self.loader, epoch, start_iter=start)
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(derive_seed(self.seed, WORKER_STREAM, epoch))  # worker base seeds
        return iter(self.loader)
