"""Debian's chromium under Playwright for Python (Playwright's own browser download is not used).

``GCREPRO_CHROMIUM`` names another executable; else ``chromium`` on PATH (.ci/run installs Debian's).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

# Headless, as root (no sandbox), and no background traffic: this machine's network is closed.
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium_executable() -> Path | None:
    """The chromium to drive, or None when there is none."""
    named = os.environ.get("GCREPRO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    path = Path(named)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_tools() -> str:
    """Why the browser test cannot run here ('' when it can): no chromium, no playwright or no jupyterlab."""
    missing = []
    if chromium_executable() is None:
        missing.append("chromium (apt-get install chromium; .ci/run does it, or set GCREPRO_CHROMIUM)")
    for module, how in (("playwright", "pip install -e '.[dev]' --no-build-isolation"),
                        ("jupyterlab", "pip install -e '.[lab]' --no-build-isolation")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} ({how})")
    return "; ".join(missing)


def launch(playwright, user_data_dir: Path):
    """A headless chromium with a fresh profile in ``user_data_dir``: a BrowserContext (close it to quit)."""
    user_data_dir.mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=str(chromium_executable()), headless=True,
        args=list(CHROMIUM_ARGS), viewport={"width": 1400, "height": 1000},
    )
