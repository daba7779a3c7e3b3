"""One owner per run folder: an exclusive ``flock`` on ``RUN_DIR/.gcrepro.lock``.

    with hold_run_dir(work_dir, option="--work-dir"):
        ...  # train, evaluate, or one entry of the table runner

- The lock file names its holder (JSON: pid, host, command, started), written once the lock is taken
  and removed on release. A second process is refused at once: :class:`RunDirInUse`, one line naming
  the holder.
- Nesting: a process may enter a folder whose holder is one of its ancestors on this host (the parent-PID
  chain, read from ``/proc``; where there is no ``/proc``, the parent only). It then holds and cleans
  nothing: the table runner's notebook kernels, the workers ``gcrepro.engine.launch`` starts. The holder
  itself may not enter twice (a second train in the same folder from another thread is refused).
  Under torchrun only rank 0 takes the lock (the other ranks write nothing).
- The kernel releases a ``flock`` when its process dies. The next process then takes the lock and, finding
  the dead holder's record, logs the takeover naming it.
- The new holder removes temporary files that an interrupted atomic write left (``.NAME.XXXX.tmp``,
  :mod:`gcrepro.atomic` and checkpoints) anywhere in the folder.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from gcrepro.run_dir import RunDirError, ensure_run_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are not locked there
    fcntl = None

LOCK_FILE = ".gcrepro.lock"
_ORPHAN_TMP = re.compile(r"^\..+\.tmp$")  # gcrepro.atomic: ".NAME.XXXXXXXX.tmp"; checkpoint links ".NAME.PID.tmp"
_COMMAND_CHARS = 100
_UNLOCKED = -1  # not a descriptor: a folder that cannot be locked

logger = logging.getLogger(__name__)
_held_fds: set[int] = set()  # the lock files this process holds open


def _close_held_in_child() -> None:
    """After a fork (DataLoader workers): close the copies of the parent's locked descriptors, so that the
    lock goes with the parent when it dies, not with its last orphaned worker. (Closing a copy keeps the
    parent's lock; unlocking it would not.)"""
    for fd in _held_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder (the lock file's JSON)."""

    pid: int
    host: str
    command: str
    started: str  # ISO 8601, local time

    @classmethod
    def this_process(cls) -> Holder:
        main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set under python -m MODULE
        if main_spec is not None:
            program = "gcrepro" if main_spec.name == "gcrepro.cli" else f"python -m {main_spec.name}"
        else:
            program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        command = " ".join([program, *sys.argv[1:]])
        if len(command) > _COMMAND_CHARS:
            command = command[: _COMMAND_CHARS - 3] + "..."
        return cls(pid=os.getpid(), host=socket.gethostname(), command=command,
                   started=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            values = json.loads(text)
            return cls(pid=int(values["pid"]), host=str(values["host"]), command=str(values["command"]),
                       started=str(values["started"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        """``PID 1234 on host h (gcrepro train 2 ...) since 11:02``."""
        try:
            started = _dt.datetime.fromisoformat(self.started)
            today = started.date() == _dt.datetime.now(started.tzinfo).date()
            since = started.strftime("%H:%M" if today else "%Y-%m-%d %H:%M")
        except ValueError:
            since = self.started
        return f"PID {self.pid} on host {self.host} ({self.command}) since {since}"


class RunDirInUse(RuntimeError):
    """Another process holds the run folder; the message names it in one line."""

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


def _ancestors() -> list[int]:
    """This process's parent, grandparent, ... (parent only where there is no /proc)."""
    chain = [os.getppid()]
    while chain[-1] > 1 and len(chain) < 256:
        try:
            stat = Path(f"/proc/{chain[-1]}/stat").read_text()
        except OSError:
            break
        chain.append(int(stat.rsplit(")", 1)[1].split()[1]))  # after "pid (comm)": state, ppid, ...
    return chain


def _read_holder(path: Path, *, wait_s: float = 1.0) -> Holder | None:
    """The holder's record; a holder that has just taken the lock writes it within moments."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = Holder.parse(path.read_text())
        except OSError:
            holder = None
        if holder is not None or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def _refusal(folder: Path, holder: Holder | None, option: str) -> RunDirInUse:
    who = holder.describe() if holder is not None else "another process (its lock record is unreadable)"
    return RunDirInUse(f"{folder} is in use by {who}; wait for it or choose another {option}", holder)


def remove_orphan_tmp_files(folder: Path) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left anywhere in ``folder``; returns them."""
    removed = []
    for parent, _, files in os.walk(folder):
        for name in files:
            if _ORPHAN_TMP.match(name):
                path = Path(parent) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        logger.info("%s: removed %d unfinished temporary file(s) of an interrupted write: %s", folder, len(removed),
                    ", ".join(str(p.relative_to(folder)) for p in removed[:5]))
    return removed


class _NoFlock(OSError):
    """The folder's file system does not support flock (some network or FUSE mounts)."""


def _open_locked(path: Path, folder: Path, option: str) -> int | None:
    """A descriptor of the lock file, locked; None when another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunDirError(f"{folder} is not writable ({path.name}: {err.strerror}); "
                              f"choose another {option}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise _NoFlock(err.errno, err.strerror) from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def hold_run_dir(folder: str | Path, *, option: str = "--work-dir") -> Iterator[Holder | None]:
    """Own ``folder`` (made if missing) for the ``with`` block; yields this process's record, or None when
    entering a folder an ancestor holds. RunDirInUse when another process holds it; RunDirError when it is
    a file or not writable. ``option``: the flag that chose the folder (named in the errors)."""
    folder = Path(folder)
    made = ensure_run_dir(folder, option=option)
    try:
        with _locked(folder, option) as held:
            yield held
    finally:
        if made and not any(folder.iterdir()):
            with contextlib.suppress(OSError):  # another process may have just written into it
                folder.rmdir()  # a command that failed at once leaves no empty folder behind


@contextmanager
def _locked(folder: Path, option: str) -> Iterator[Holder | None]:
    path = folder / LOCK_FILE
    try:
        fd = _open_locked(path, folder, option) if fcntl is not None else _UNLOCKED
    except _NoFlock as err:
        logger.warning("%s: cannot be locked (%s); nothing stops a second process from using it", folder, err.strerror)
        fd = _UNLOCKED
    if fd == _UNLOCKED:  # no flock here (Windows, some network file systems)
        yield None
        return
    if fd is None:
        holder = _read_holder(path)
        if holder is None or holder.host != socket.gethostname() or holder.pid not in _ancestors():
            raise _refusal(folder, holder, option)
        yield None  # nested in an ancestor's hold
        return
    _held_fds.add(fd)
    try:
        previous = os.read(fd, 1 << 16).decode(errors="replace")
        if previous.strip():
            old = Holder.parse(previous)
            logger.warning("%s: taking over the lock of %s, which ended without releasing it",
                           folder, old.describe() if old is not None else "an unreadable holder record")
        me = Holder.this_process()
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        remove_orphan_tmp_files(folder)
        yield me
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter that opened this file retries on a new one
        fcntl.flock(fd, fcntl.LOCK_UN)
        _held_fds.discard(fd)
        os.close(fd)
