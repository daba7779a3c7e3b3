"""Saving matplotlib figures as PNG files, atomically."""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
