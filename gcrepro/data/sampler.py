"""Batch samplers: aspect-ratio grouped training batches (rank-aware) and sharded evaluation.

Training (``GroupedBatchSampler``), like mmdetection's (Distributed)GroupSampler: images are put in
two groups, landscape/square (w >= h) and portrait (w < h); every batch holds one group only, so
padding to a common batch shape wastes little. Per epoch, with a generator seeded from
(seed, epoch) only:

1. each group is shuffled and padded (by repeating its own first images) to a multiple of
   ``batch_size * num_replicas``;
2. it is cut into blocks of ``batch_size * num_replicas``; the blocks of all groups are shuffled;
3. rank r takes images ``[r * batch_size, (r + 1) * batch_size)`` of every block.

So an epoch is deterministic for a seed, every rank gets the same number of batches
(``len(sampler)`` = sum over groups of ceil(n_group / (batch_size * num_replicas))), and the ranks'
slots are disjoint and cover every image (an image repeats only as padding). Since the blocks do
not depend on how they are split, R ranks with batch B take, together, exactly the batches of one
process with batch R * B (the distributed-equivalence property).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from gcrepro.data.seeding import SAMPLER_STREAM, generator


def aspect_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image: 1 for w >= h (landscape or square), 0 for w < h (portrait)."""
    return [int(r >= 1.0) for r in aspect_ratios]


def _check_rank(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")


class GroupedBatchSampler(Sampler[list[int]]):
    """Epoch-based, aspect-grouped, rank-aware batch sampler (see the module docstring)."""

    def __init__(
        self,
        group_ids: Sequence[int],
        *,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(group_ids) == 0:
            raise ValueError("GroupedBatchSampler needs at least one image (the dataset is empty)")
        _check_rank(num_replicas, rank)
        self.group_ids = torch.as_tensor(list(group_ids), dtype=torch.int64)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_iter = 0

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        """Select ``epoch``'s order; skip its first ``start_iter`` batches (resume mid-epoch)
        without loading them. ``len()`` stays the full epoch length."""
        if not 0 <= start_iter <= len(self):
            raise ValueError(f"start_iter must be in [0, {len(self)}], got {start_iter}")
        self.epoch = int(epoch)
        self.start_iter = int(start_iter)

    def _block(self) -> int:
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        block = self._block()
        counts = torch.bincount(self.group_ids)
        return int(sum((int(n) + block - 1) // block for n in counts if n > 0))

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch, in order (all of them, ignoring start_iter)."""
        g = generator(self.seed, SAMPLER_STREAM, self.epoch)
        block = self._block()
        blocks: list[torch.Tensor] = []
        for group in torch.unique(self.group_ids).tolist():  # sorted: deterministic
            members = torch.nonzero(self.group_ids == group).flatten()
            members = members[torch.randperm(len(members), generator=g)]
            num_slots = -(-len(members) // block) * block  # rounded up to whole blocks
            padded = members.repeat(-(-num_slots // len(members)))[:num_slots]  # pad by repeating
            blocks += list(padded.view(-1, block))
        order = torch.randperm(len(blocks), generator=g).tolist()
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [blocks[i][lo:hi].tolist() for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.start_iter :]


class ShardSampler(Sampler[int]):
    """Sequential evaluation order split over ranks: rank r gets images r, r + R, r + 2R, ...
    Shards are disjoint and together cover every image exactly once (no padding; shard lengths
    may differ by one, so evaluation must gather results, not run a collective per batch)."""

    def __init__(self, num_samples: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        _check_rank(num_replicas, rank)
        self.indices = range(rank, num_samples, num_replicas)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
