"""Seeds derived from tuples of integers, independent of any global RNG.

Flip draws and sampler shuffles use ``derive_seed(seed, epoch, ...)`` so they are the same with
any number of DataLoader workers, on every rank, and after a kill-and-resume. The second key is a
stream id, so different uses of one (seed, epoch) never share a seed.
"""
from __future__ import annotations

import numpy as np
import torch

FLIP_STREAM = 0  # (seed, FLIP_STREAM, epoch, index): the dataset's flip draw
SAMPLER_STREAM = 1  # (seed, SAMPLER_STREAM, epoch): the training batch order
WORKER_STREAM = 2  # (seed, WORKER_STREAM, epoch): DataLoader worker base seeds (set by the engine)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy SeedSequence hashing)."""
    if any(int(k) < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*keys)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g
