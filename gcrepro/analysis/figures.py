"""Saving matplotlib figures as PNG files, atomically."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from gcrepro.atomic import atomic_open


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG to a temporary name beside ``path``, then rename it into place."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)
