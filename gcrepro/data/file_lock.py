"""``exclusive_lock(path)``: an advisory inter-process lock on a lock file (POSIX ``flock``), so
processes started together (training ranks) do a one-time job once; the others wait, then reuse it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock; callers must stay correct without one (each may do the job)
    fcntl = None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent; its folder must exist) for the block."""
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)
