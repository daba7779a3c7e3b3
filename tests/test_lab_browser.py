"""JupyterLab in a real browser: Debian's chromium driven by Playwright, as a reader would use the notebooks.

A tiny trained table (rows 1 and 2, one iteration each on a 4+2-image toy set) lies in a temporary root with
copies of attention.ipynb and report.ipynb (parameters pointing at it). JupyterLab serves that root on
127.0.0.1 with a token; the browser opens the attention notebook, runs Run > Run All Cells, and saves it.
Asserted: every cell ran and none has an error output; the ipywidgets view renders as widgets (not its
text fallback); choosing another stage changes the image; report.ipynb run the same way writes a
report.html that shows every trained entry. A failing step leaves a screenshot in the test's tmp folder.

Needs chromium (.ci/run installs Debian's) and the playwright package (the dev extra); without them the
tests skip, except under CI=true, where a missing tool is a failure.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from gcrepro.analysis import notebook_params as nbp
from lab_browser import chromium, lab_page
from lab_browser.failure_shots import screenshot_on_failure
from lab_browser.notebook_copy import copy_with_parameters
from lab_browser.server import LabServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GC_ENTRY = "mask_rcnn_r50_fpn_gc_r16_1x"  # row 2: GC blocks in c3-c5, so there are maps to show
ENTRIES = ("mask_rcnn_r50_fpn_1x", GC_ENTRY)  # rows 1 and 2: what the report must show
TINY_TRAINING = {"max_iters": 1, "min_size": 64, "max_size": 96, "num_workers": 0}
LAB_START_S = 120.0  # server answering; a notebook shown with its kernel idle
RUN_ALL_S = 60.0  # Run All on 2 busy cores: kernel start, torch import, 13 GC blocks x 2 images
UI_STEP_S = 30.0  # one widget update, a save, a page load

# The attention view's controls carry these classes (gcrepro.analysis.attention_plots.interactive_view).
STAGE_SELECT = ".gcrepro-attention-stage select"
PICTURE = "img.gcrepro-attention-picture"


@pytest.fixture(scope="module")
def tools() -> None:
    missing = chromium.missing_tools()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"the browser test needs: {missing}")
    if missing:
        pytest.skip(f"the browser test needs: {missing}")


@pytest.fixture(scope="module")
def lab_root(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/runs/<entry> for rows 1 and 2 (trained, not evaluated), ROOT/notebooks/{attention,report}.ipynb
    (attention.ipynb with entry = row 2 set as papermill sets it)."""
    import gcrepro
    from gcrepro.data import make_toy_dataset

    root = tmp_path_factory.mktemp("lab_root")
    toy = make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=3, num_train=4, num_val=2, image_size=64)
    runs = root / "runs"
    for name in ENTRIES:
        gcrepro.train(name, data=toy, work_dir=runs / name, overrides=TINY_TRAINING)
    notebooks = root / "notebooks"
    copy_with_parameters("attention", notebooks, {"entry": GC_ENTRY})  # its run found through GCREPRO_RUNS
    shutil.copy(nbp.notebook_path("report"), notebooks / "report.ipynb")  # as committed: GCREPRO_RUNS
    return root


@pytest.fixture(scope="module")
def lab(lab_root: Path, tmp_path_factory: pytest.TempPathFactory):
    server = LabServer(lab_root, tmp_path_factory.mktemp("lab_home"),
                       extra_env={"GCREPRO_RUNS": str(lab_root / "runs")})
    try:
        server.wait_ready(LAB_START_S)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab: LabServer, tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    try:
        context = chromium.launch(driver, tmp_path_factory.mktemp("chromium_profile"))
        context.set_default_timeout(UI_STEP_S * 1000)
        try:
            yield context
        finally:
            context.close()
    finally:
        driver.stop()


def run_notebook(context, lab: LabServer, path: str, shot: Path):
    """A page with ``path`` (relative to Lab's root) opened, run with Run All, and saved; its code prompts."""
    page = context.new_page()
    with screenshot_on_failure(page, shot):
        lab_page.open_notebook(page, lab.url(f"lab/tree/{path}"), timeout_s=LAB_START_S)
        prompts = lab_page.run_all(page, timeout_s=RUN_ALL_S)
        lab_page.save(page, timeout_s=UI_STEP_S)
    return page, prompts


@pytest.fixture(scope="module")
def attention(browser, lab: LabServer, tmp_path_factory: pytest.TempPathFactory):
    return run_notebook(browser, lab, "notebooks/attention.ipynb",
                        tmp_path_factory.mktemp("shots") / "attention_run_all.png")


def assert_ran_cleanly(prompts: list[str], saved: Path) -> None:
    """Every code cell ran (prompt [N]) and, in the notebook Lab saved, has no error output."""
    assert prompts and all(lab_page.EXECUTED.match(p) for p in prompts), f"cells not all run: {prompts}"
    nb = nbformat.read(saved, as_version=4)
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, cell in enumerate(nb.cells)
              if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{saved.name}: {errors}"
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), f"{saved.name} saved before it ran"


def widget_view(page):
    """The ipywidgets view in the attention notebook's last output: a box holding the controls and the picture."""
    return page.locator(".jp-OutputArea-output .jupyter-widgets.widget-vbox", has=page.locator(PICTURE)).last


def test_attention_notebook_runs_without_errors(attention, lab_root: Path) -> None:
    _, prompts = attention
    assert_ran_cleanly(prompts, lab_root / "notebooks" / "attention.ipynb")


def test_widget_renders_not_its_text_fallback(attention, tmp_path: Path) -> None:
    page, _ = attention
    with screenshot_on_failure(page, tmp_path / "widget.png"):
        view = widget_view(page)
        view.wait_for(state="visible")
        text = page.locator(".jp-CodeCell").last.locator(".jp-OutputArea").inner_text()
        assert not re.search(r"VBox\(|Loading widget|Error displaying widget", text), f"widget fallback: {text!r}"
        assert view.locator(STAGE_SELECT).is_visible()
        picture = view.locator(PICTURE)
        picture.wait_for(state="visible")
        assert picture.evaluate("img => img.complete && img.naturalWidth > 50 && img.naturalHeight > 50")
        box = picture.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100, f"picture shown at {box}"


def test_changing_the_stage_changes_the_image(attention, tmp_path: Path) -> None:
    page, _ = attention
    with screenshot_on_failure(page, tmp_path / "stage.png"):
        view = widget_view(page)
        stage, picture = view.locator(STAGE_SELECT), view.locator(PICTURE)
        options = stage.locator("option").all_inner_texts()
        assert len(options) >= 2, f"stage options: {options}"
        before_src, before_pixels = picture.get_attribute("src"), picture.screenshot()
        chosen = (stage.evaluate("s => s.selectedIndex") + 1) % len(options)
        stage.select_option(index=chosen)
        page.wait_for_function("([img, src]) => img.src !== src && img.complete && img.naturalWidth > 0",
                               arg=[picture.element_handle(), before_src], timeout=UI_STEP_S * 1000)
        assert picture.get_attribute("src") != before_src
        # what is painted follows the new src a frame or more later: look until it differs
        deadline = time.monotonic() + UI_STEP_S
        while picture.screenshot() == before_pixels:
            assert time.monotonic() < deadline, f"stage {options[chosen]}: the picture on screen did not change"
            page.wait_for_timeout(200)


def test_report_page_shows_every_entry(browser, lab: LabServer, lab_root: Path, tmp_path: Path) -> None:
    page, prompts = run_notebook(browser, lab, "notebooks/report.ipynb", tmp_path / "report_run_all.png")
    assert_ran_cleanly(prompts, lab_root / "notebooks" / "report.ipynb")
    with screenshot_on_failure(page, tmp_path / "report_page.png"):
        page.goto(lab.url("files/runs/report.html"))
        rows = page.locator("table tbody tr")
        rows.first.wait_for(state="visible")
        texts = rows.all_inner_texts()
        for name in ENTRIES:
            assert sum(name in t for t in texts) == 1, f"report.html: entry {name} not in one row: {texts}"
        assert len(texts) == len(ENTRIES), f"report.html rows: {texts}"
