"""A screenshot of the page when a browser step fails, saved beside the test's other files."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def screenshot_on_failure(page, path: Path) -> Iterator[None]:
    """Run the block; if it raises, save a full-page PNG of ``page`` to ``path`` (and say where) and re-raise."""
    try:
        yield
    except BaseException:
        try:
            page.screenshot(path=str(path), full_page=True)
            print(f"browser test failed: screenshot {path}")
        except Exception as err:  # the page or browser may be gone: the original error matters more
            print(f"browser test failed: no screenshot ({err})")
        raise
