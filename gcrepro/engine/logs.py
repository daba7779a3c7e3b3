"""Log lines of a run: INFO to stderr on rank 0 (warnings only on other ranks) and ``WORK_DIR/log.txt``.

Inside a notebook (an IPython kernel) INFO lines go to stdout instead, so that progress and the COCOeval
summary read as output, not as pink error blocks; warnings and errors stay on stderr.

Handlers are attached to the ``gcrepro`` logger and replaced on each call, so a notebook that
trains several times does not print every line several times. When ``log.txt`` cannot be written
(a full disk) one line says so and the run goes on logging to the console. The command line appends
the traceback of an unexpected error to ``log.txt`` (:func:`append_traceback`).
"""
from __future__ import annotations

import datetime as _dt
import logging
import sys
import traceback
from pathlib import Path

LOG_FILE = "log.txt"
_TAG = "_gcrepro_run_handler"


class _RunLogFile(logging.FileHandler):
    """``log.txt``; a failed write is reported once on stderr (not one traceback per log line)."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True
        err = sys.exc_info()[1]
        print(f"gcrepro: cannot write {self.baseFilename} ({err}); log lines go to the console only",
              file=sys.stderr)


def in_notebook() -> bool:
    """This process is a Jupyter kernel whose output goes to a notebook (ipykernel replaced sys.stdout)."""
    return "ipykernel" in sys.modules and type(sys.stdout).__module__.startswith("ipykernel")


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def _console_handlers(rank: int, formatter: logging.Formatter) -> list[logging.Handler]:
    """stderr (INFO on rank 0, WARNING elsewhere); in a notebook INFO to stdout and WARNING up to stderr."""
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [errors]
    if rank == 0 and in_notebook():
        errors.setLevel(logging.WARNING)
        info = logging.StreamHandler(sys.stdout)
        info.setLevel(logging.INFO)
        info.addFilter(_BelowWarning())
        handlers.append(info)
    for handler in handlers:
        handler.setFormatter(formatter)
    return handlers


def setup_logging(work_dir: Path | None, *, rank: int) -> None:
    """Route ``gcrepro.*`` log records: console on rank 0 (INFO), file ``work_dir/log.txt`` if given."""
    root = logging.getLogger("gcrepro")
    for handler in [h for h in root.handlers if getattr(h, _TAG, False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    root.propagate = False
    prefix = "" if rank == 0 else f"[rank {rank}] "
    formatter = logging.Formatter(f"{prefix}%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S")
    for console in _console_handlers(rank, formatter):
        setattr(console, _TAG, True)
        root.addHandler(console)
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _RunLogFile(work_dir / LOG_FILE)
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(file_handler, _TAG, True)
        root.addHandler(file_handler)


def append_traceback(work_dir: Path, err: BaseException, *, command: str) -> Path | None:
    """Append ``err`` with its traceback to ``work_dir/log.txt``; the file, or None when the folder does not
    exist or the file cannot be written."""
    path = work_dir / LOG_FILE
    if not work_dir.is_dir():
        return None
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(path, "a") as f:
            f.write(f"{stamp} ERROR {command}: unexpected error\n")
            f.write("".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path
