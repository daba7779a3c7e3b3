"""The four notebooks, executed with papermill on tiny parameters; assertions on what they wrote.

One pipeline through the real table runner (`table_run`: train -> evaluate -> attention for the
GC r16 entry, then report.ipynb) on a 4+2-image toy set with 2 training iterations; opening the
evaluate and attention notebooks again on that run, found through ``runs_dir`` in a table folder,
shows what is stored and changes no file; plus the attention notebook on a GC-off entry, and the
committed notebooks' hygiene.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import numpy as np
from nbformat.sign import NotebookNotary
import pandas as pd
import papermill
import pytest
from PIL import Image

from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import run_status
from gcrepro.run_metrics import COCO_KEYS, read_metrics

GC_ENTRY = "mask_rcnn_r50_fpn_gc_r16_1x"  # row 2: 13 GC blocks (c3: 4, c4: 6, c5: 3)
BASELINE = "mask_rcnn_r50_fpn_1x"  # row 1: no GC blocks
TINY_TRAINING = {  # overrides for gcrepro.train: 2 iterations, every one logged and timed
    "overrides.max_iters": "2", "overrides.log_interval": "1", "overrides.warmup_iters": "1",
    "overrides.num_workers": "0", "overrides.timing_skip_iters": "0",
}


def assert_png_not_blank(path: Path) -> None:
    """A valid PNG (decodes) with real content: pixel values vary."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 10.0, f"{path} looks blank (pixel std {pixels.std():.1f})"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, f"{path}: too few colours for a heatmap"


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory) -> Path:
    from gcrepro.data import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=3, num_train=4, num_val=2, image_size=64)


@pytest.fixture(scope="module")
def table_runs(tiny_toy: Path, tmp_path_factory) -> tuple[Path, int]:
    from gcrepro.analysis.table_runner import table_run

    runs = tmp_path_factory.mktemp("runs") / "table"  # a table run's folder, like make demo's runs/demo
    sets = [(k, v) for k, v in TINY_TRAINING.items()] + [("num_images", "1")]
    code = table_run([GC_ENTRY], runs_dir=runs, data=str(tiny_toy), sets=sets)
    return runs, code


def test_committed_notebooks_are_clean() -> None:
    folder = nbp.notebooks_dir()
    from gcrepro.paths import PACKAGE_DIR

    assert folder == PACKAGE_DIR / "notebooks"  # shipped as package data (a symlink to notebooks/ in a checkout)
    for name in (*nbp.ENTRY_NOTEBOOKS, nbp.REPORT_NOTEBOOK):
        nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}.ipynb is committed with outputs"
        params = nbp.declared_params(folder / f"{name}.ipynb")  # exactly one 'parameters' cell, known types
        assert params, name
        for p in params.values():
            assert p.help.strip(), f"{name}.ipynb parameter {p.name} has no help comment"
    assert {"entry", "data", "work_dir", "profile", "gpus", "overrides", "spec"} <= set(
        nbp.declared_params(folder / "train.ipynb"))


def test_pipeline_train_evaluate_attention_report(table_runs: tuple[Path, int]) -> None:
    runs, code = table_runs
    run = runs / GC_ENTRY
    status = run_status.read_status(run)
    assert code == 0, status
    assert status["state"] == "done" and status["error"] is None
    assert set(status["timings"]) == {"train", "evaluate", "attention"}
    shown = {}  # notebook -> MIME types of its rich outputs
    for nb in ("train", "evaluate", "attention"):
        executed = nbformat.read(run / f"{nb}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        shown[nb] = {m for c in executed.cells for o in c.get("outputs", []) for m in o.get("data", {})}
    assert "image/png" in shown["train"]  # the loss curve is displayed, not just saved
    assert "text/html" in shown["evaluate"]  # the COCO table
    assert "image/png" in shown["attention"]
    assert "application/vnd.jupyter.widget-view+json" in shown["attention"]  # the interactive view, also headless
    # Signed with the user's notary: JupyterLab opens them trusted (styled tables, widgets).
    for path in [run / f"{nb}.ipynb" for nb in ("train", "evaluate", "attention")] + [runs / "report.ipynb"]:
        assert NotebookNotary().check_signature(nbformat.read(path, as_version=4)), path
    # Log lines (progress, the COCOeval summary) are output on stdout, not stderr blocks; the tables have no 'nan'
    # and one header row.
    evaluate_nb = nbformat.read(run / "evaluate.ipynb", as_version=4)
    streams = {name: "".join(o.get("text", "") for c in evaluate_nb.cells for o in c.get("outputs", [])
                             if o.get("name") == name) for name in ("stdout", "stderr")}
    assert "COCOeval bbox" in streams["stdout"] and " I gcrepro" not in streams["stderr"]
    assert "no class split: not a toy context set (gcrepro data toy --kind context)" in streams["stdout"]  # shapes set
    tables = [o["data"]["text/html"] for c in evaluate_nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(tables) == 2 and all("nan" not in t.lower() for t in tables)
    assert [t.split("</thead>")[0].count("<tr>") for t in tables] == [1, 1]  # no empty extra header row

    # train.ipynb: checkpoint, training log, loss curve.
    assert (run / "checkpoints" / "latest.pth").is_file()
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in log)
    assert_png_not_blank(run / "loss_curve.png")

    # evaluate.ipynb: metrics.json with the 12 COCO numbers per task, labelled toy, and the run spec
    # train.ipynb received from the runner (the same the checkpoint records).
    metrics = read_metrics(run)
    assert metrics.entry == GC_ENTRY and metrics.label == "toy" and metrics.iterations == 2
    assert metrics.spec is not None and metrics.spec.train.max_iters == 2 and metrics.spec.profile == "toy"
    assert metrics.spec.to_dict() == run_status.read_params(run)["notebooks"]["train"]["spec"]
    for numbers in (metrics.bbox, metrics.segm):
        assert all(v is None or 0.0 <= v <= 100.0 for v in numbers.values())
    assert metrics.train_s_per_iter > 0 and metrics.mem_gb > 0
    assert metrics.inf_fps is None  # 2 val images are all inside the engine's 5 warm-up images
    coco = pd.read_csv(run / "coco_table.csv", index_col=0)
    assert list(coco.index) == ["bbox", "segm"] and list(coco.columns) == list(COCO_KEYS)
    assert coco.loc["bbox", "AP"] == pytest.approx(metrics.box_ap, abs=0.01)

    # attention.ipynb: one grid (13 GC blocks) and one non-local panel for the one image.
    summary = json.loads((run / "attention" / "summary.json").read_text())
    assert summary["gc"] is True and len(summary["blocks"]) == 13
    assert sorted((b["stage"], b["block_index"]) for b in summary["blocks"]) == (
        [(2, j) for j in range(4)] + [(3, j) for j in range(6)] + [(4, j) for j in range(3)])
    assert len(summary["images"]) == 1 and summary["nonlocal_block"] == "c4 b5"
    pngs = sorted((run / "attention").glob("*.png"))
    assert [p.name for p in pngs] == sorted(summary["files"]) and len(pngs) == 2
    for png in pngs:
        assert_png_not_blank(png)
    sim = next(iter(summary["nonlocal_query_similarity"].values()))
    assert abs(sim) <= 1.0 + 1e-9  # a cosine (computed in float64)

    # report.ipynb: one row per entry, toy-labelled, ours = metrics.json, no Δ to COCO numbers.
    assert (runs / "report.ipynb").is_file() and (runs / "report.html").is_file()
    report = pd.read_csv(runs / "report.csv")
    assert list(report["entry"]) == [GC_ENTRY]
    row = report.iloc[0]
    assert row["data"] == "toy" and row["state"] == "done" and row["row"] == 2
    assert row["box_ap"] == pytest.approx(metrics.box_ap, abs=1e-3)
    assert row["paper_box_ap"] == 38.5 and row["paper_mask_ap"] == 35.1
    assert math.isnan(row["delta_box_ap"]) and math.isnan(row["delta_mask_ap"])
    assert row["paper_gc_gain_box_ap"] == pytest.approx(38.5 - 37.3)
    assert math.isnan(row["gc_gain_box_ap"])  # our baseline (row 1) was not run
    html = (runs / "report.html").read_text()
    assert "toy: not COCO numbers" in html and "NOT COCO numbers" in html


def test_rerun_skips_the_completed_entry(table_runs: tuple[Path, int], tiny_toy: Path, capsys) -> None:
    from gcrepro.analysis.table_runner import table_run

    runs, _ = table_runs
    before = run_status.read_status(runs / GC_ENTRY)
    sets = [(k, v) for k, v in TINY_TRAINING.items()] + [("num_images", "1")]
    assert table_run([GC_ENTRY], runs_dir=runs, data=str(tiny_toy), sets=sets) == 0
    assert "skipped, done earlier" in capsys.readouterr().out
    assert run_status.read_status(runs / GC_ENTRY) == before


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_opening_evaluate_and_attention_again_shows_what_is_stored(table_runs: tuple[Path, int],
                                                                  tmp_path: Path) -> None:
    # Found from the runs folder above the table folder (RUNS/table/ENTRY, as runs/demo/ENTRY), nothing re-run:
    # metrics.json, the maps and every other file of the run stay byte for byte, mtimes too.
    runs, code = table_runs
    assert code == 0
    before = _files(runs.parent)
    outputs = {}
    for nb, extra in (("evaluate", {}), ("attention", {"num_images": 1})):
        out = papermill.execute_notebook(
            str(nbp.notebook_path(nb)), str(tmp_path / f"{nb}.ipynb"),
            parameters={"entry": GC_ENTRY, "runs_dir": str(runs.parent), **extra},
            kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
        outputs[nb] = out
        stdout = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
        assert f"run folder {runs / GC_ENTRY}" in stdout and "shown as stored" in stdout, stdout
    assert _files(runs.parent) == before
    shown = {m for c in outputs["attention"].cells for o in c.get("outputs", []) for m in o.get("data", {})}
    assert {"image/png", "application/vnd.jupyter.widget-view+json"} <= shown  # figures and the view, from the files

    # What is stored is not shown for something else: another checkpoint file, other settings, another val set.
    from gcrepro.analysis.attention_run import stored_attention
    from gcrepro.analysis.notebook_support import stored_evaluation

    run = runs / GC_ENTRY
    latest = run / "checkpoints" / "latest.pth"
    assert stored_attention(GC_ENTRY, run_dir=run, checkpoint=latest, num_images=1)[0] is not None
    assert "other settings (num_images 1 -> 2)" in stored_attention(GC_ENTRY, run_dir=run, checkpoint=latest)[1]
    assert stored_evaluation(run, data=str(tmp_path))[0] is None
    assert stored_evaluation(run, checkpoint=str(latest))[0] is not None
    stat = latest.stat()
    try:
        os.utime(latest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten checkpoint
        stale, why = stored_attention(GC_ENTRY, run_dir=run, checkpoint=latest, num_images=1)
        assert stale is None and "as it was then" in why
    finally:
        os.utime(latest, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_attention_notebook_on_a_gc_off_entry_has_nothing_to_show(tmp_path: Path) -> None:
    out = papermill.execute_notebook(
        str(nbp.notebook_path("attention")), str(tmp_path / "attention.ipynb"),
        parameters={"entry": BASELINE, "work_dir": str(tmp_path), "interactive": False},
        kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
    )
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "has no GC blocks" in text
    summary = json.loads((tmp_path / "attention" / "summary.json").read_text())
    assert summary["gc"] is False and not list((tmp_path / "attention").glob("*.png"))
