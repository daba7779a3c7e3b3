"""Whether Ctrl-C (SIGINT) has reached this process, so that an error it caused still ends as "interrupted".

Ctrl-C at a terminal signals the whole process group. A loader worker or a child that dies of it first can make the
main process fail with a secondary error ("DataLoader worker (pid 941208) exited unexpectedly", a broken pipe)
instead of the KeyboardInterrupt; :func:`watch` records the signal so that the command still reports "interrupted",
exits 130 and leaves its run resumable. Inside :func:`deferred` (a checkpoint being written) the KeyboardInterrupt
waits until the block is done: ``torch.save`` into a file object turns a KeyboardInterrupt mid-write into
"RuntimeError: ... unexpected pos". Every CLI command runs under :func:`watch`, and so do the training and
evaluation loops themselves (a notebook kernel: ipykernel runs a cell with Python's default SIGINT handler, and
the table runner stops a kernel with SIGINT). Where someone else installed a SIGINT handler (a library user's own)
nothing is changed and :func:`received` stays False.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


@dataclass
class _State:
    received_at: float | None = None  # when SIGINT arrived inside watch()
    deferring: int = 0  # depth of deferred() blocks
    pending: bool = False  # a SIGINT arrived inside one


_state = _State()


def received() -> bool:
    """True once SIGINT arrived inside :func:`watch` in this process (until the next :func:`watch` begins)."""
    return _state.received_at is not None


def caused(err: BaseException | None) -> bool:
    """Whether ``err`` (the exception being handled) is a Ctrl-C or came after one inside :func:`watch`."""
    return isinstance(err, KeyboardInterrupt) or received()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _state.received_at is None:
        _state.received_at = time.monotonic()
    if _state.deferring:
        _state.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def deferred() -> Iterator[None]:
    """A Ctrl-C inside the block is raised when the block ends (a checkpoint is written whole, then the command
    stops). The block runs under :func:`watch` (entered here if no one did); where :func:`watch` leaves SIGINT
    alone (another handler, another thread) the block runs as it is."""
    with watch():
        _state.deferring += 1
        try:
            yield
        finally:
            _state.deferring -= 1
        if _state.deferring == 0 and _state.pending:
            _state.pending = False
            raise KeyboardInterrupt


@contextmanager
def watch() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt as Python's default handler does, and is remembered. Only in the main thread
    and where SIGINT is at Python's default handler (never over a handler someone else installed, nor where the
    parent left SIGINT ignored)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # inside a watch() already (our handler), or a handler that is not ours to replace
        return
    _state.received_at, _state.pending = None, False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
