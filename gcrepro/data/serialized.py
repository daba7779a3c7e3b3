"""A read-only list stored as one pickled byte buffer (the detectron2 trick).

DataLoader workers are forked; touching millions of small Python objects (COCO's annotation dicts)
updates their reference counts, which copies every page they live on into every worker. A numpy
byte buffer has no per-item objects, so workers share it for real. Matters for COCO train2017
(860k annotations) with several workers per GPU; harmless for the toy set.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np


class SerializedList:
    """``items[i]`` unpickles item ``i`` on access; the list itself is two numpy arrays."""

    def __init__(self, items: Iterable[Any]) -> None:
        blobs = [np.frombuffer(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for item in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)  # [N]
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(memoryview(self._buffer[start : int(self._ends[index])]))
