"""The one exception type for bad data: its message is a single line naming the file (and image or
annotation id) and what was expected, so the CLI can print it as is.

A ``DataError`` raised inside a DataLoader worker reaches the main process re-made by torch as
``DataError("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...")``
(``torch._utils.ExceptionWrapper.reraise``): a first line without the file name. The constructor
recognises that form and keeps the original one line, adding "(in DataLoader worker N)"; the
worker's traceback stays in ``worker_traceback``.
"""
from __future__ import annotations

import re

_WORKER_WRAPPED = re.compile(r"\ACaught (\w+) in DataLoader worker process (\d+)\.\nOriginal (Traceback.*)\Z", re.DOTALL)


def _unwrap_worker_message(message: str) -> tuple[str, str | None]:
    """(the one line to show, the worker's traceback or None) of a message torch may have wrapped."""
    match = _WORKER_WRAPPED.match(message)
    if match is None:
        return message, None
    name, worker, traceback = match.groups()
    # The traceback's last line for the exception itself: "gcrepro.data.errors.DataError: <message>".
    line = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}: (.*)$")
    for text in reversed(traceback.splitlines()):
        found = line.match(text)
        if found:
            return f"{found.group(1)} (in DataLoader worker {worker})", traceback
    return message, None  # not the layout we know: keep torch's message whole


class DataError(ValueError):
    """Bad or missing data (annotation file, image file, dataset layout)."""

    def __init__(self, message: str = "", *args: object) -> None:
        shown, self.worker_traceback = _unwrap_worker_message(message) if isinstance(message, str) else (message, None)
        super().__init__(shown, *args)
