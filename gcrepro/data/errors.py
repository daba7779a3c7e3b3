"""The one exception type for bad data: its message is a single line naming the file (and image or
annotation id) and what was expected, so the CLI can print it as is."""
from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data (annotation file, image file, dataset layout)."""
