"""What a reader does in JupyterLab, as Playwright steps: open a notebook, Run All from the Run menu, wait
until every queued cell has run, save. Waits are on Lab's own DOM state (the kernel status indicator, the
cells' input prompts ``[ ]`` / ``[*]`` / ``[N]``, the tab's dirty mark), never fixed sleeps.
"""
from __future__ import annotations

import re

CODE_PROMPTS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt"
# The status bar's kernel item, "Python 3 (ipykernel) | Idle" once the kernel is connected and idle. (The
# toolbar's execution indicator also reads idle before a kernel exists: a Run All then asks for a kernel.)
KERNEL_STATUS = "#jp-main-statusbar .jp-StatusBar-TextItem[title^='Change kernel']"
MAIN_TAB = "#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current"
EXECUTED = re.compile(r"^\[\d+\]:?$")

# true once a code cell shows [*] or [N]: Run All has reached the kernel
_STARTED = """(sel) => [...document.querySelectorAll(sel)].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""
# true when a kernel (not "No Kernel") is connected and idle
_KERNEL_IDLE = """(status) => { const item = document.querySelector(status);
    return item !== null && !item.textContent.startsWith('No Kernel') && / \\| Idle$/.test(item.textContent) }"""
# true when no code cell is queued or running and the kernel is idle
_SETTLED = """([sel, status]) => { const item = document.querySelector(status);
    return item !== null && / \\| Idle$/.test(item.textContent)
        && ![...document.querySelectorAll(sel)].some(p => p.textContent.includes('[*]')) }"""


def open_notebook(page, url: str, *, timeout_s: float) -> None:
    """Open ``url`` (a /lab/tree/... address) and wait until the notebook shows and its kernel is idle."""
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout_s * 1000)
    page.wait_for_function(_KERNEL_IDLE, arg=KERNEL_STATUS, timeout=timeout_s * 1000)


def run_all(page, *, timeout_s: float) -> list[str]:
    """Run > Run All Cells, then wait until every queued cell has run; the code cells' prompts, in order."""
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    page.wait_for_function(_STARTED, arg=CODE_PROMPTS, timeout=timeout_s * 1000)
    page.wait_for_function(_SETTLED, arg=[CODE_PROMPTS, KERNEL_STATUS], timeout=timeout_s * 1000)
    return [text.strip() for text in page.locator(CODE_PROMPTS).all_inner_texts()]


def save(page, *, timeout_s: float) -> None:
    """File > Save Notebook (Ctrl+S), then wait until the tab no longer shows unsaved changes."""
    page.wait_for_selector(f"{MAIN_TAB}.jp-mod-dirty", timeout=timeout_s * 1000)  # Run All changed it
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    # the main area's current tab (the side bars have current tabs of their own, never dirty)
    page.wait_for_selector(f"{MAIN_TAB}:not(.jp-mod-dirty)", timeout=timeout_s * 1000)
