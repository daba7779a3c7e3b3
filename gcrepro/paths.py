"""Where gcrepro keeps data and runs by default.

``GCREPRO_DATA`` overrides the data root; otherwise a source checkout uses its own
``data/`` folder (beside ``pyproject.toml``) and an installed package uses
``~/.cache/gcrepro/data``. ``GCREPRO_RUNS`` overrides the runs folder; otherwise a checkout uses
its own ``runs/`` and an installed package ``runs/`` in the working directory. Finding an entry's
run in it: :mod:`gcrepro.analysis.runs_dir`.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path | None:
    """The source checkout holding this package, or None for an installed package."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def data_root() -> Path:
    """Folder holding ``coco/`` and ``toy/``."""
    env = os.environ.get("GCREPRO_DATA")
    if env:
        return Path(env).expanduser().resolve()
    root = project_root()
    return root / "data" if root is not None else Path.home() / ".cache" / "gcrepro" / "data"


def default_toy_dir() -> Path:
    """Where the synthetic toy dataset is made (or reused) when a command is given no data."""
    return data_root() / "toy"


def default_runs_dir() -> Path:
    """Folder of runs: ``$GCREPRO_RUNS``, else ``runs/`` of the checkout (of the working directory when installed).
    Commands, the table runner, the demo (``RUNS/demo``) and every notebook start from it."""
    env = os.environ.get("GCREPRO_RUNS")
    if env:
        return Path(env).expanduser().resolve()
    root = project_root()
    return (root if root is not None else Path.cwd()) / "runs"
