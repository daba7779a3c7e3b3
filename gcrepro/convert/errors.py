"""The converter's one error type."""
from __future__ import annotations


class ConvertError(ValueError):
    """Bad input to the converter; the message is one line naming the file, key or value and what was expected."""
