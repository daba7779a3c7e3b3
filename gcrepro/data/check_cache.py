"""Where a passed image check is remembered, so a second run over the same files skips it.

One small JSON file per checked split, OUTSIDE the dataset (which may be read-only or shared):
``$GCREPRO_CACHE/checks/`` when ``GCREPRO_CACHE`` is set, else ``$XDG_CACHE_HOME/gcrepro/checks/``
(default ``~/.cache/gcrepro/checks/``). The file is named after the split's annotation file and image
folder (absolute paths) and holds the fingerprint of the last pass: the annotation file's sha256
and, for every listed image in order, its name, size, mtime and ctime (ctime catches a rewrite that
kept size and mtime, e.g. ``cp -p``). Any difference re-checks the whole split.

Only passes are stored: a failure (perhaps a transient read error) is checked again every time.
A cache folder that cannot be written costs the skip, never the run (one warning line).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from gcrepro.atomic import write_json_atomic
from gcrepro.data.file_lock import exclusive_lock

logger = logging.getLogger("gcrepro.data")

CACHE_ENV = "GCREPRO_CACHE"
CHECK_VERSION = 1  # part of every fingerprint: a changed check re-checks every split


def cache_dir() -> Path:
    """The folder of the image-check records (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve() / "checks"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "gcrepro" / "checks"


def record_path(ann_file: Path, image_dir: Path) -> Path:
    """The record of the split whose annotation file and image folder are these."""
    key = hashlib.sha256(f"{ann_file.resolve()}\n{image_dir.resolve()}".encode()).hexdigest()[:24]
    return cache_dir() / f"{image_dir.name}-{key}.json"


def fingerprint(ann_sha256: str, files: list[tuple[str, os.stat_result | None]]) -> str:
    """sha256 of the check version, the annotation file's sha256 and each (file name, stat or missing)."""
    h = hashlib.sha256(f"v{CHECK_VERSION}\n{ann_sha256}\n".encode())
    for name, st in files:
        stamp = "missing" if st is None else f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
        h.update(f"{name}\0{stamp}\n".encode())
    return h.hexdigest()


def passed_before(record: Path, fingerprint_: str) -> bool:
    """True when ``record`` says exactly these files passed."""
    try:
        return json.loads(record.read_text()).get("fingerprint") == fingerprint_
    except (OSError, ValueError, AttributeError):  # absent, unreadable or not ours: check again
        return False


def remember_pass(record: Path, fingerprint_: str, summary: dict) -> bool:
    """Store a pass (atomically); False, with one warning line, when the cache cannot be written."""
    try:
        write_json_atomic(record, {"fingerprint": fingerprint_, **summary})
    except OSError as err:
        logger.warning("cannot write the image-check record %s (%s); the next run checks the images again "
                       "(set %s to a writable folder)", record, err.strerror or err, CACHE_ENV)
        return False
    return True


@contextlib.contextmanager
def record_lock(record: Path) -> Iterator[None]:
    """Exclusive lock on ``record`` (training ranks start together: one checks, the others then find
    its pass). Without a writable cache folder there is no lock and each caller checks."""
    lock = record.with_suffix(".lock")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError:
        yield
        return
    with exclusive_lock(lock):
        yield
