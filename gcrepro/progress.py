"""Progress of long runs: what training and evaluation report, and how it is shown.

Modes (``--progress MODE``, else ``$GCREPRO_PROGRESS``, else ``auto``):

- ``auto``: a bar on a terminal, a ``tqdm.auto`` widget in a notebook, lines otherwise (a pipe, a log
  file, ``TERM=dumb``);
- ``bar``: a tqdm bar (ASCII only where ``NO_COLOR`` is set, the terminal is dumb or not UTF-8);
- ``lines``: one line every ``every`` steps and at the end: entry, stage, done/total, loss, s/step, ETA;
- ``none``: nothing on screen.

Whatever the mode, rank 0 also writes the state to ``RUN_DIR/progress.json`` (atomically, at most once a
second, and at each stage's start and end), so that a parent process can show it: the table runner, whose
notebook kernels' output papermill keeps in the notebook (:mod:`gcrepro.progress_view`)::

    {"entry", "stage": "train" | "evaluate", "done", "total", "unit": "it" | "img", "loss": float | null,
     "s_per_step": float | null, "eta_s": float | null, "every", "state": "running" | "done" | "failed" |
     "interrupted", "updated": unix time, "pid"}
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODES = ("auto", "bar", "lines", "none")
ENV = "GCREPRO_PROGRESS"
PROGRESS_FILE = "progress.json"
WRITE_EVERY_S = 1.0  # progress.json at most this often (plus each stage's start and end)

logger = logging.getLogger(__name__)


class ProgressModeError(ValueError):
    """An unknown progress mode; the message (one line) names the value, where it came from and the choices."""


def check_mode(value: str, *, source: str = "--progress") -> str:
    if value not in MODES:
        raise ProgressModeError(f"{source} {value!r}: expected one of {'|'.join(MODES)}")
    return value


def option(value: str | None) -> str | None:
    """A ``--progress`` value checked, or None (then ``$GCREPRO_PROGRESS`` is checked): bad input fails before
    anything runs."""
    if value is None:
        if os.environ.get(ENV):
            check_mode(os.environ[ENV], source=f"${ENV}")
        return None
    return check_mode(value)


def dumb_terminal() -> bool:
    return os.environ.get("TERM", "") == "dumb"


def plain_text() -> bool:
    """Draw with ASCII only: ``NO_COLOR`` set, a dumb terminal, or stderr that cannot encode block characters."""
    encoding = (getattr(sys.stderr, "encoding", None) or "ascii").lower().replace("-", "")
    return "NO_COLOR" in os.environ or dumb_terminal() or encoding != "utf8"


def resolve_mode(mode: str | None, *, stream: Any = None) -> str:
    """``mode`` (None: ``$GCREPRO_PROGRESS``, else auto), with ``auto`` decided for ``stream`` (default stderr):
    bar | lines | none. ProgressModeError for an unknown mode."""
    if mode is None:
        mode = check_mode(os.environ.get(ENV) or "auto", source=f"${ENV}")
    check_mode(mode)
    if mode != "auto":
        return mode
    from gcrepro.engine.logs import in_notebook

    if in_notebook():
        return "bar"  # tqdm.auto: a widget
    stream = stream if stream is not None else sys.stderr
    is_tty = getattr(stream, "isatty", lambda: False)()
    return "bar" if is_tty and not dumb_terminal() else "lines"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def describe(state: dict[str, Any]) -> str:
    """``train 20/300 loss 1.234 0.52 s/it ETA 2m31s`` (the entry is the caller's to add)."""
    unit = state.get("unit", "it")
    text = f"{state['stage']} {state['done']}/{state['total']}"
    if state.get("loss") is not None:
        text += f" loss {state['loss']:.3f}"
    if state.get("s_per_step") is not None:
        text += f" {state['s_per_step']:.2f} s/{unit}"
    if state.get("state", "running") != "running":
        return text + f" {state['state']}"
    return text + f" ETA {format_eta(state.get('eta_s'))}"


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/progress.json, or None when absent or unreadable (a reader never sees a partial file)."""
    try:
        state = json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    needed = ("stage", "done", "total", "state", "updated")
    return state if isinstance(state, dict) and all(k in state for k in needed) else None


class Progress:
    """One stage (``train``: optimiser steps; ``evaluate``: images) of one entry, on the process that reports.

    ``update(done, loss=)`` after each step; ``close(state)`` at the end. Shows it as ``mode`` says
    (:func:`resolve_mode`) and writes ``run_dir/progress.json`` when ``run_dir`` is given.
    """

    def __init__(self, *, stage: str, total: int, entry: str, run_dir: Path | None, mode: str | None = None,
                 every: int = 20, unit: str = "it", initial: int = 0) -> None:
        self.state: dict[str, Any] = {
            "entry": entry, "stage": stage, "done": initial, "total": total, "unit": unit, "loss": None,
            "s_per_step": None, "eta_s": None, "every": max(1, every), "state": "running", "updated": time.time(),
            "pid": os.getpid(),
        }
        self.path = Path(run_dir) / PROGRESS_FILE if run_dir is not None else None
        self.mode = resolve_mode(mode)
        self.start, self.initial = time.perf_counter(), initial
        self.written = 0.0
        self.bar = self._bar() if self.mode == "bar" else None
        self._write(force=True)

    def _bar(self) -> Any:
        from gcrepro.engine.logs import in_notebook

        if in_notebook():
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        s = self.state
        return tqdm(total=s["total"], initial=s["done"], desc=f"{s['entry']} {s['stage']}", unit=s["unit"],
                    dynamic_ncols=True, ascii=plain_text(), file=sys.stderr)

    def update(self, done: int, *, loss: float | None = None) -> None:
        s = self.state
        step = done - s["done"]
        s["done"], s["loss"] = done, loss
        if done > self.initial:
            s["s_per_step"] = (time.perf_counter() - self.start) / (done - self.initial)
            s["eta_s"] = s["s_per_step"] * max(0, s["total"] - done)
        if self.bar is not None:
            self.bar.update(step)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif self.mode == "lines" and (done % s["every"] == 0 or done == s["total"]):
            logger.info("%s %s", s["entry"], describe(s))
        self._write(force=done == s["total"])

    def close(self, state: str = "done") -> None:
        self.state["state"] = state
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and state != "done":
            logger.info("%s %s", self.state["entry"], describe(self.state))
        self._write(force=True)

    def _write(self, *, force: bool) -> None:
        now = time.time()
        if self.path is None or (not force and now - self.written < WRITE_EVERY_S):
            return
        from gcrepro.atomic import write_json_atomic

        self.state["updated"] = now
        try:
            write_json_atomic(self.path, self.state, indent=None)
        except OSError as exc:  # progress is a view: a full disk stops the file, not the run
            logger.warning("cannot write %s (%s); progress shows on this console only", self.path, exc)
            self.path = None
        self.written = now


@contextlib.contextmanager
def progress_env(mode: str | None) -> Iterator[None]:
    """``$GCREPRO_PROGRESS`` = ``mode`` inside (for this process and the ones it starts: notebook kernels, launched
    ranks), restored after; None changes nothing."""
    if mode is None:
        yield
        return
    check_mode(mode)
    previous = os.environ.get(ENV)
    os.environ[ENV] = mode
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
