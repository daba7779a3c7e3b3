"""Log lines of a run: INFO to stderr on rank 0 (warnings only on other ranks) and ``WORK_DIR/log.txt``.

Handlers are attached to the ``gcrepro`` logger and replaced on each call, so a notebook that
trains several times does not print every line several times.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

_TAG = "_gcrepro_run_handler"


def setup_logging(work_dir: Path | None, *, rank: int) -> None:
    """Route ``gcrepro.*`` log records: console on rank 0 (INFO), file ``work_dir/log.txt`` if given."""
    root = logging.getLogger("gcrepro")
    for handler in [h for h in root.handlers if getattr(h, _TAG, False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    root.propagate = False
    prefix = "" if rank == 0 else f"[rank {rank}] "
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(f"{prefix}%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    setattr(console, _TAG, True)
    root.addHandler(console)
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(work_dir / "log.txt")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(file_handler, _TAG, True)
        root.addHandler(file_handler)
