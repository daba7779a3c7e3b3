"""Log lines of a run: INFO to stderr on rank 0 (warnings only on other ranks) and ``WORK_DIR/log.txt``.

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
