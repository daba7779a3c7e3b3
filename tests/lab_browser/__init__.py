"""Helpers for tests/test_lab_browser.py: a JupyterLab server on loopback, Debian's chromium under Playwright,
and the few JupyterLab actions a reader does (open a notebook, Run All, save)."""
