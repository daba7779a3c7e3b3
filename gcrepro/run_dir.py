"""Can a run folder be used? One line for a folder that is a file, cannot be written, or is full.

``ensure_run_dir`` checks a folder before a run starts; ``as_run_dir_error`` turns a failed write during
a run (ENOSPC and EDQUOT, or EACCES / EPERM / EROFS on a file in the folder; also when torch wraps the
OSError in its own error, as ``torch.save`` does with ``unexpected pos ...``) into a :class:`RunDirError`.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class RunDirError(OSError):
    """A run folder that cannot be used: a file, not writable, or full. The message is one line."""


def ensure_run_dir(folder: Path, *, option: str) -> bool:
    """Make ``folder`` (and its parents) if missing; True when it was made here. RunDirError when it (or a
    parent) is a file, or when it cannot be created or written. ``option``: the flag that chose it."""
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{folder} is a file; expected a folder (choose another {option})")
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocking = next((p for p in folder.parents if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise RunDirError(f"{folder}: cannot create it, {blocking} is a file (choose another {option})") from None
        raise RunDirError(f"{folder} is not writable: cannot create it ({err.strerror}); "
                          f"choose another {option}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunDirError(f"{folder} is not writable; choose another {option}")
    return not existed


def os_error_in(err: BaseException) -> OSError | None:
    """``err`` itself if an OSError, else the first OSError it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def as_run_dir_error(err: BaseException, folder: Path, *, writing: Path | None = None) -> RunDirError | None:
    """The one-line RunDirError for a write into ``folder`` that failed with ``err``, or None when ``err`` is
    something else. ``writing``: the file being written, when the caller knows it (the OSError often does
    not name it)."""
    os_err = os_error_in(err)
    if os_err is None:
        return None
    if isinstance(os_err, RunDirError):
        return os_err
    path = writing or (Path(os.fsdecode(os_err.filename)) if os_err.filename else None)
    inside = path is None or _inside(path, folder)
    place = folder if inside else path.parent
    shown = None if path is None else path.resolve().relative_to(folder.resolve()) if inside else path.name
    what = "" if shown is None else f" (writing {shown})"
    if os_err.errno in _NO_SPACE:
        return RunDirError(f"no space left on {place}{what}")
    if os_err.errno in _NOT_WRITABLE and path is not None and inside:
        return RunDirError(f"{folder} is not writable{what}: {os_err.strerror}")
    return None
