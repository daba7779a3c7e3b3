"""DataLoaders for training and evaluation, yielding ``(list[Tensor], list[dict])`` batches.

Training loaders are EPOCH-BASED: ``len(loader)`` is the number of iterations (batches per rank)
in one epoch. Before each epoch call ``set_epoch(loader, epoch)`` (or, to resume mid-epoch at
iteration ``k`` of that epoch, ``set_epoch(loader, epoch, start_iter=k)``): it selects that
epoch's shuffle AND flip draws, both derived from (seed, epoch) only, so the data stream is the
same for any ``num_workers`` and after a kill-and-resume. Workers are not persistent, so each
``iter(loader)`` sees the dataset's current epoch.

Evaluation loaders are sequential, batch 1 by default; when distributed each rank reads a disjoint
shard (see ``ShardSampler``) and together the ranks cover every image once.
"""
from __future__ import annotations

import signal

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from gcrepro.data.sampler import GroupedBatchSampler, ShardSampler, aspect_groups


def collate(batch: list[tuple]) -> tuple[list, list]:
    """[(image, target), ...] -> ([image, ...], [target, ...]) (images keep their own sizes)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def ignore_ctrl_c_in_worker(worker_id: int) -> None:
    """A loader worker ignores SIGINT: Ctrl-C at a terminal reaches the whole process group, and a worker that
    died of it first made the main process fail with "DataLoader worker exited unexpectedly" instead of
    stopping as interrupted. The main process's KeyboardInterrupt shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rank_and_world(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError("give both rank and world_size, or neither")
        return rank, world_size
    if not distributed:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_loader(distributed=True) needs an initialised torch.distributed process group")
    return dist.get_rank(), dist.get_world_size()


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int,
    seed: int,
    distributed: bool,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` (a ``CocoInstances`` or anything with ``aspect_ratios()``).

    Args:
        batch_size: images per batch per rank (SPEC §4: 2 per GPU); evaluation: usually 1.
        train: aspect-grouped shuffled batches (epoch-based) vs sequential evaluation order.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: seed of the shuffle and (training) of the dataset's flips: sets ``dataset.seed``.
        distributed: split over the ranks of the initialised process group.
        rank, world_size: explicit rank split (tests, custom launchers); default from torch.distributed.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    rank, world_size = _rank_and_world(distributed, rank, world_size)
    if train:
        if hasattr(dataset, "seed"):
            dataset.seed = seed  # flips derive from (seed, epoch, index): one seed for the stream
        batch_sampler = GroupedBatchSampler(
            aspect_groups(dataset.aspect_ratios()),
            batch_size=batch_size,
            num_replicas=world_size,
            rank=rank,
            seed=seed,
        )
    else:
        shard = ShardSampler(len(dataset), num_replicas=world_size, rank=rank)
        batch_sampler = BatchSampler(shard, batch_size=batch_size, drop_last=False)
    loader_generator = torch.Generator()
    loader_generator.manual_seed(seed)  # worker base seeds: deterministic too
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=loader_generator,
        worker_init_fn=ignore_ctrl_c_in_worker if num_workers > 0 else None,
        persistent_workers=False,  # each epoch's workers copy the dataset's current epoch
    )


def set_epoch(loader: DataLoader, epoch: int, start_iter: int = 0) -> None:
    """Select ``epoch`` for the loader's sampler and dataset; skip the first ``start_iter`` batches
    (resume in the middle of an epoch). Call it before ``iter(loader)``."""
    sampler = loader.batch_sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch, start_iter=start_iter)
    elif start_iter:
        raise ValueError("start_iter needs a training loader (GroupedBatchSampler)")
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
