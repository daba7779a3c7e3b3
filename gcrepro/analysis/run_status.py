"""One entry's run folder: ``status.json`` and ``params.yaml``, written atomically.

status.json::

    {"entry": NAME, "state": "running" | "done" | "failed" | "interrupted" (Ctrl-C; a re-run resumes it),
     "started": ISO time, "finished": ISO time | null,
     "timings": {"train": s, "evaluate": s, "attention": s},
     "error": null | "RuntimeError: ..." | "interrupted (Ctrl-C) in train", "failed_notebook": null | PATH,
     "traceback": null | [lines]}
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import yaml

from gcrepro.atomic import write_json_atomic, write_text_atomic

STATUS_FILE = "status.json"
PARAMS_FILE = "params.yaml"
STATES = ("running", "done", "failed", "interrupted")


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_status(run_dir: Path) -> dict | None:
    """The entry's status, or None when it never started (or the file is unreadable)."""
    path = run_dir / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return status if isinstance(status, dict) and status.get("state") in STATES else None


def write_status(run_dir: Path, status: dict) -> None:
    if status.get("state") not in STATES:
        raise ValueError(f"{run_dir / STATUS_FILE}: state {status.get('state')!r}, expected one of {STATES}")
    write_json_atomic(run_dir / STATUS_FILE, status)


def read_params(run_dir: Path) -> dict | None:
    try:
        return yaml.safe_load((run_dir / PARAMS_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None


def write_params(run_dir: Path, params: dict) -> None:
    write_text_atomic(run_dir / PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))
