"""What the table runner shows while its entries run in notebook kernels (whose own output papermill keeps).

Worker threads say which entry runs which notebook (:meth:`ProgressView.notebook`) and hand over each entry's
summary line (:meth:`ProgressView.finished`); the main thread calls :meth:`ProgressView.poll` about twice a
second: it reads each running entry's ``RUN_DIR/progress.json`` (:mod:`gcrepro.progress`) and draws everything.
Only the main thread writes to the stream.

- ``bar``: one live row per running entry (rich): entry, notebook, a bar, done/total, loss, s/step, ETA (or
  the time the notebook has run where it reports no progress); summary lines scroll above the rows.
- ``lines``: a line each time an entry passes a multiple of its ``every`` steps, reaches its total or stops;
  ``none``: only the summary lines.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gcrepro.progress import describe, format_eta, plain_text, read_progress


@dataclass
class _Running:
    label: str  # "[2/3] ENTRY"
    run_dir: Path
    notebook: str = ""
    since: float = field(default_factory=time.time)  # when the notebook started (unix time)
    shown: tuple = ()  # lines mode: (stage, bucket, state) last printed
    task: Any = None  # bar mode: the rich task id


class ProgressView:
    def __init__(self, *, mode: str, stream: TextIO) -> None:
        self.mode, self.stream = mode, stream
        self.lock = threading.Lock()
        self.running: dict[str, _Running] = {}
        self.ended: list[tuple[str, str]] = []  # (key, summary line) not yet written
        self.last_lines: list[str] = []  # lines mode: a notebook's final state, read as it ended, not yet written
        self.live = None
        if mode == "bar":
            self.live = self._rich()

    def _rich(self) -> Any:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        console = Console(file=self.stream, no_color=plain_text(), highlight=False)
        live = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        console=console, auto_refresh=False, transient=True)
        live.start()
        return live

    # --- from worker threads -------------------------------------------------------------------
    def started(self, key: str, label: str, run_dir: Path) -> None:
        with self.lock:
            self.running[key] = _Running(label=label, run_dir=Path(run_dir))

    def notebook(self, key: str, name: str) -> None:
        with self.lock:
            if key in self.running:
                self._keep_last(self.running[key])
                self.running[key].notebook, self.running[key].since = name, time.time()

    def finished(self, key: str, line: str) -> None:
        with self.lock:
            if key in self.running:
                self._keep_last(self.running[key])
            self.ended.append((key, line))

    def _keep_last(self, entry: _Running) -> None:
        """Lines mode, as a notebook ends (under the lock): its final state, unless already shown. The next
        notebook overwrites progress.json, and a short stage can end between two polls."""
        state = self._state(entry) if self.mode == "lines" and entry.notebook else None
        line = self._new_line(entry, state) if state is not None else None
        if line is not None:
            self.last_lines.append(line)

    # --- main thread ---------------------------------------------------------------------------
    def poll(self) -> None:
        with self.lock:
            ended, self.ended = self.ended, []
            last_lines, self.last_lines = self.last_lines, []
            gone = [self.running.pop(key, None) for key, _ in ended]
            running = dict(self.running)
        for line in last_lines:
            self._write(line)
        for entry, (_, line) in zip(gone, ended):
            if self.live is not None and entry is not None and entry.task is not None:
                self.live.remove_task(entry.task)
            self._write(line)
        for entry in running.values():
            state = self._state(entry)
            if self.mode == "lines" and state is not None:
                self._line(entry, state)
            elif self.live is not None:
                self._row(entry, state)
        if self.live is not None:
            self.live.refresh()

    def close(self) -> None:
        self.poll()
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _state(self, entry: _Running) -> dict[str, Any] | None:
        """The entry's progress.json when it is about the notebook running now (not an earlier stage's)."""
        state = read_progress(entry.run_dir)
        if state is None or state["stage"] != entry.notebook or state["updated"] < entry.since - 1.0:
            return None
        return state

    def _line(self, entry: _Running, state: dict[str, Any]) -> None:
        with self.lock:
            line = self._new_line(entry, state)
        if line is not None:
            self._write(line)

    @staticmethod
    def _new_line(entry: _Running, state: dict[str, Any]) -> str | None:
        """The line for ``state`` when it passed a multiple of ``every``, its total, or changed state; else None."""
        every = max(1, int(state.get("every") or 1))
        bucket = state["done"] // every if state["done"] < state["total"] else "end"
        key = (state["stage"], bucket, state["state"])
        if key == entry.shown:
            return None
        entry.shown = key
        return f"{entry.label} {describe(state)}"

    def _row(self, entry: _Running, state: dict[str, Any] | None) -> None:
        name = f"{entry.label} {entry.notebook}"
        if state is None:
            fields = {"total": None, "completed": 0, "info": f"{format_eta(time.time() - entry.since)}"}
        else:
            info = f"{state['done']}/{state['total']}"
            if state.get("loss") is not None:
                info += f" loss {state['loss']:.3f}"
            if state.get("s_per_step") is not None:
                info += f" {state['s_per_step']:.2f} s/{state.get('unit', 'it')} ETA {format_eta(state.get('eta_s'))}"
            fields = {"total": state["total"] or None, "completed": state["done"], "info": info}
        if entry.task is None:
            entry.task = self.live.add_task(name, **fields)
        else:
            self.live.update(entry.task, description=name, **fields)

    def _write(self, line: str) -> None:
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
