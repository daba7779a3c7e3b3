"""Stop every process this one started: notebook kernels, their DataLoader workers, launched ranks.

Jupyter starts each kernel in a session (and process group) of its own, so a Ctrl-C at the terminal reaches
only the process in front (the table runner); its kernels and their children would train on.
:func:`stop_children` signals each child's process group and each descendant: SIGINT first (a kernel stops its
cell with KeyboardInterrupt: the training says "interrupted" in progress.json, its last checkpoint is
intact), then SIGTERM, then SIGKILL, each after a short wait.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psutil  # ipykernel's own dependency


def _signal_all(sig: int, seen: dict[int, psutil.Process], groups: set[int]) -> None:
    """Send ``sig`` once to every descendant: to each process group they lead or share (not ours), and one by one
    to those in our group. Once only: a second SIGINT would interrupt the first one's clean-up."""
    own_group = os.getpgid(0)
    alone = []
    for proc in psutil.Process().children(recursive=True):
        seen.setdefault(proc.pid, proc)
        try:
            group = os.getpgid(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if group != own_group:
            groups.add(group)
        else:
            alone.append(proc)
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in alone:
        try:
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _alive(seen: dict[int, psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in seen.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def stop_children(*, interrupt_s: float = 3.0, term_s: float = 2.0, kill_s: float = 1.0,
                  settled: Callable[[], bool] = lambda: False) -> int:
    """SIGINT, then SIGTERM, then SIGKILL to every descendant of this process, each followed by a wait of up to
    ``interrupt_s``, ``term_s``, ``kill_s`` for all of them to exit (the wait after SIGINT also ends once
    ``settled()``: the caller's own work is over); returns how many still run (0 normally)."""
    seen: dict[int, psutil.Process] = {}
    groups: set[int] = set()
    for sig, wait_s in ((signal.SIGINT, interrupt_s), (signal.SIGTERM, term_s), (signal.SIGKILL, kill_s)):
        _signal_all(sig, seen, groups)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(seen) or (sig == signal.SIGINT and settled()):
                break
            time.sleep(0.05)
        if not _alive(seen) and not psutil.Process().children(recursive=True):
            return 0
    return len(_alive(seen))
