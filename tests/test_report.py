"""The table report: joins runs with the paper's table, Δ and GC gains, labels, escaping, files written."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest

import gcrepro
from gcrepro.analysis import curves, report, run_status
from gcrepro.analysis.notebook_support import coco_table
from gcrepro.analysis.runs_dir import RunsDirError
from gcrepro.data.identity import COCO_VAL2017_IDS_SHA256, DataSpec
from gcrepro.run_metrics import COCO_KEYS, read_metrics, write_eval_metrics, write_train_metrics
from gcrepro.runspec import resolve_run

DATA = {
    "toy": DataSpec(root="/d/toy", kind="toy", name="toy", num_classes=6, val_images=64, val_ids_sha256="t",
                    val_sha256="toy-val"),
    "coco": DataSpec(root="/d/coco", kind="coco", name="coco", num_classes=81, val_images=5000,
                     val_ids_sha256=COCO_VAL2017_IDS_SHA256, val_sha256="coco-val"),
    "custom": DataSpec(root="/d/shapes200", kind="custom", name="shapes200", num_classes=6, val_images=40,
                       val_ids_sha256="c", val_sha256="custom-val"),
}


def _coco(ap: float) -> dict:
    return {k: (ap if k == "AP" else 1.0) for k in COCO_KEYS}


def _run(runs: Path, entry: str, *, box: float | None, mask: float | None, data: str = "toy", profile: str | None = None,
         state: str = "done", folder: str | None = None) -> Path:
    run_dir = runs / (folder or entry)
    run_status.write_status(run_dir, {"entry": entry, "state": state})
    if box is not None:
        spec = resolve_run(entry, data=DATA[data], profile=profile)
        write_train_metrics(run_dir, spec, iterations=10, mem_gb=1.5, mem_kind="cpu_peak_rss", train_s_per_iter=0.25,
                            train_images_per_s=8.0, train={}, provenance={
                                "hardware": {"device": "cpu", "world_size": 1, "cpu": "Test CPU", "cpu_count": 2}})
        write_eval_metrics(run_dir, spec, eval_data=DATA[data], bbox=_coco(box), segm=_coco(mask), inf_fps=4.0, eval={})
    return run_dir


def test_report_rows_deltas_gains_and_toy_labels(tmp_path: Path) -> None:
    e = {r: gcrepro.get_entry(r) for r in (1, 2, 3, 7, 8, 9)}
    _run(tmp_path, e[1].name, box=20.0, mask=18.0)  # toy baseline of rows 1-3
    _run(tmp_path, e[2].name, box=23.5, mask=19.0)  # toy GC r16
    _run(tmp_path, e[3].name, box=None, mask=None, state="failed")  # failed before evaluation
    _run(tmp_path, e[7].name, box=36.2, mask=33.0, data="coco")  # COCO baseline of rows 7-9 (paper profile)
    _run(tmp_path, e[8].name, box=39.9, mask=36.0, data="coco")  # COCO GC r16
    _run(tmp_path, e[9].name, box=30.0, mask=28.0, data="toy")  # toy run in a COCO-baseline group
    (tmp_path / "not_a_run").mkdir()

    frame, csv_path, html_path = report.write_report(tmp_path)
    assert list(frame["row"]) == [1, 2, 3, 7, 8, 9]
    by_row = frame.set_index("row")

    # Toy rows: labelled, no Δ to the paper, GC gain against the toy baseline only.
    assert list(by_row.loc[[1, 2, 9], "data"]) == ["toy"] * 3
    assert by_row.loc[[1, 2, 9], ["delta_box_ap", "delta_mask_ap"]].isna().all().all()
    assert by_row.loc[2, "gc_gain_box_ap"] == pytest.approx(3.5)
    assert by_row.loc[2, "gc_gain_mask_ap"] == pytest.approx(1.0)
    assert by_row.loc[2, "paper_gc_gain_box_ap"] == pytest.approx(e[2].paper_box_ap - e[1].paper_box_ap)
    assert math.isnan(by_row.loc[9, "gc_gain_box_ap"])  # its baseline (row 7) ran on COCO: not comparable
    assert math.isnan(by_row.loc[1, "paper_gc_gain_box_ap"])  # a baseline has no gain

    # COCO rows: Δ = ours - paper; gains from both.
    assert by_row.loc[8, "delta_box_ap"] == pytest.approx(39.9 - e[8].paper_box_ap)
    assert by_row.loc[7, "delta_mask_ap"] == pytest.approx(33.0 - e[7].paper_mask_ap)
    assert by_row.loc[8, "gc_gain_box_ap"] == pytest.approx(39.9 - 36.2)

    # mmdetection's public re-run beside the paper's, where mmdetection has the row (not row 1, the fixBN baseline).
    assert by_row.loc[8, "mmdet_box_ap"] == 40.4 and by_row.loc[8, "mmdet_mask_ap"] == 36.2
    assert by_row.loc[2, "mmdet_box_ap"] == 39.7 and math.isnan(by_row.loc[1, "mmdet_box_ap"])

    # Failed entry: listed with its state, no numbers; paper numbers still there.
    assert by_row.loc[3, "state"] == "failed" and math.isnan(by_row.loc[3, "box_ap"])
    assert by_row.loc[3, "paper_box_ap"] == e[3].paper_box_ap
    assert by_row.loc[1, "paper_mem_gb"] == e[1].paper_mem_gb and by_row.loc[1, "mem_gb"] == 1.5
    assert by_row.loc[1, "hardware"] == "1 x cpu Test CPU, 2 cores"

    # Files: CSV round-trips the frame; HTML carries toy labels in caption and cells, Δ coloured.
    csv = pd.read_csv(csv_path)
    assert list(csv["entry"]) == list(frame["entry"]) and list(csv["data"].fillna("")) == list(frame["data"])
    assert csv.loc[csv["row"] == 8, "delta_box_ap"].item() == pytest.approx(39.9 - e[8].paper_box_ap, abs=1e-3)
    html = html_path.read_text()
    assert "labelled &#x27;toy&#x27;" in html and "NOT COCO numbers" in html
    assert "23.5\u00a0toy" in html and "3.5\u00a0toy" in html
    assert f"{39.9 - e[8].paper_box_ap:.1f}" in html
    assert "configs/gcnet/metafile.yml" in html  # the re-run's source is named
    assert "background-color: rgba(46, 160, 67" in html  # a gain is green
    assert "background-color: rgba(218, 54, 51" in html  # a loss (row 7: 36.2 < 37.2) is red
    markdown = report.to_markdown(frame)
    assert f"| 2 | {e[2].name} | toy | 38.5 | 23.5 toy | — |" in markdown and "NOT COCO numbers" in markdown


def test_custom_and_toy_profile_runs_are_never_compared_with_the_paper(tmp_path: Path) -> None:
    # The case: a user's 200-image set in the COCO layout, toy and paper profile; and COCO itself with
    # the toy profile. None of them is COCO val2017 with the paper's profile.
    e1, e2 = gcrepro.get_entry(1), gcrepro.get_entry(2)
    _run(tmp_path / "toyprof", e1.name, box=5.0, mask=4.0, data="custom", profile="toy")
    _run(tmp_path / "toyprof", e2.name, box=7.0, mask=5.0, data="custom", profile="toy")
    _run(tmp_path / "paperprof", e1.name, box=5.0, mask=4.0, data="custom", profile="paper")
    _run(tmp_path / "paperprof", e2.name, box=6.0, mask=5.0, data="coco", profile="toy")
    toyprof, _, html_path = report.write_report(tmp_path / "toyprof")
    assert list(toyprof["data"]) == ["toy", "toy"] and toyprof[["delta_box_ap", "delta_mask_ap"]].isna().all().all()
    assert toyprof.loc[1, "gc_gain_box_ap"] == pytest.approx(2.0)  # same label, profile and val set
    assert "shapes200, toy profile" in html_path.read_text()
    paperprof, _, html_path = report.write_report(tmp_path / "paperprof")
    assert list(paperprof["data"]) == ["custom", "toy"] and paperprof["delta_box_ap"].isna().all()
    assert math.isnan(paperprof.loc[1, "gc_gain_box_ap"])  # a custom baseline and a toy run: no gain
    assert "custom: shapes200" in html_path.read_text()


def test_report_escapes_markup_from_run_folders(tmp_path: Path) -> None:
    e1, e2 = gcrepro.get_entry(1), gcrepro.get_entry(2)
    _run(tmp_path, e1.name, box=5.0, mask=4.0, data="custom")
    _run(tmp_path, e2.name, box=6.0, mask=4.5, data="custom")
    for run in (e1.name, e2.name):  # the dataset's folder name (labels, caption), mem_kind, every hardware field
        raw = json.loads((tmp_path / run / "metrics.json").read_text())
        raw["spec"]["data"]["name"] = raw["eval_data"]["name"] = "<svg onload=alert(1)>"
        raw["mem_kind"] = "<script>alert(2)</script>"
        raw["hardware"] = {"device": "<u>cpu</u>", "cpu": "<img src=x onerror=alert(3)>", "world_size": "<b>2</b>"}
        (tmp_path / run / "metrics.json").write_text(json.dumps(raw))
    frame, _, html_path = report.write_report(tmp_path)
    assert list(frame["dataset"]) == ["<svg onload=alert(1)>"] * 2  # the CSV keeps the text as it is
    page = html_path.read_text()
    for payload in ("<svg", "<script", "<img src=x", "<u>", "<b>"):
        assert payload not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert page.count("&lt;svg onload=alert(1)&gt;") >= 2  # the notes: the label's text and the datasets line


def test_report_skips_folders_that_are_not_their_entry(tmp_path: Path) -> None:
    e1, e2 = gcrepro.get_entry(1), gcrepro.get_entry(2)
    _run(tmp_path, e1.name, box=5.0, mask=4.0)
    _run(tmp_path, e2.name, box=6.0, mask=4.5, folder="my_r50_gc_try")  # not an entry name
    _run(tmp_path, e2.name, box=6.0, mask=4.5, folder="2")  # a row number is not the folder's name either
    _run(tmp_path, e1.name, box=7.0, mask=5.0, folder=gcrepro.get_entry(3).name)  # row 1's numbers in row 3's folder
    run_status.write_status(tmp_path / "<b onmouseover=alert(1)>x", {"entry": "<img src=x onerror=alert(2)>",
                                                                      "state": "failed"})
    (tmp_path / "notes").mkdir()  # no run files: not a run folder, nothing to say
    # the gcrepro logger's own records (whatever handlers earlier tests in this process left on it)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gcrepro")
    logger.addHandler(handler)
    try:
        frame, _, html_path = report.write_report(tmp_path)
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records]
    assert list(frame["entry"]) == [e1.name] and frame.loc[0, "box_ap"] == 5.0
    assert len(warnings) == 4 and all("\n" not in w for w in warnings)
    assert any("'my_r50_gc_try' is not an entry name" in w for w in warnings)
    assert any("'2' is not an entry name" in w for w in warnings)
    assert any(f"its metrics.json records entry {e1.name!r}, not the folder's {gcrepro.get_entry(3).name!r}" in w
               for w in warnings)
    assert any("'<b onmouseover=alert(1)>x' is not an entry name" in w for w in warnings)
    assert "my_r50_gc_try" not in html_path.read_text() and "alert" not in html_path.read_text()


def test_report_of_missing_broken_and_old_runs(tmp_path: Path) -> None:
    with pytest.raises(RunsDirError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    _run(tmp_path, "mask_rcnn_r50_fpn_1x", box=1.0, mask=1.0)
    (tmp_path / "mask_rcnn_r50_fpn_1x" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        report.write_report(tmp_path)
    # A metrics.json of a gcrepro before the RunSpec: "coco" meant any folder, so it is not compared.
    old = {"entry": "mask_rcnn_r50_fpn_1x", "data": "coco", "profile": "paper", "bbox": _coco(30.0), "segm": _coco(28.0)}
    (tmp_path / "mask_rcnn_r50_fpn_1x" / "metrics.json").write_text(json.dumps(old))
    frame, _, html_path = report.write_report(tmp_path)
    assert frame.loc[0, "data"] == "unverified" and math.isnan(frame.loc[0, "delta_box_ap"])
    assert "not verified as COCO val2017" in html_path.read_text()


def test_coco_table_and_loss_log(tmp_path: Path) -> None:
    spec = resolve_run(1, data=DATA["toy"])
    numbers = {t: {k: float(i) for i, k in enumerate(COCO_KEYS)} for t in ("bbox", "segm")}
    numbers["segm"]["APl"] = None  # pycocotools -1: no large objects
    write_eval_metrics(tmp_path, spec, eval_data=DATA["toy"], inf_fps=None, eval={}, **numbers)
    table = coco_table(read_metrics(tmp_path))
    assert table.shape == (2, 12) and table.loc["bbox", "AR100"] == 8.0 and math.isnan(table.loc["segm", "APl"])
    write_train_metrics(tmp_path / "t", spec, iterations=1, mem_gb=1.0, mem_kind="cpu_peak_rss", train_s_per_iter=None,
                        train_images_per_s=None, train={}, provenance={})
    with pytest.raises(ValueError, match="not evaluated yet"):
        coco_table(read_metrics(tmp_path / "t"))

    log = tmp_path / "metrics.jsonl"
    lines = [{"iteration": 2, "loss": 3.0, "loss_mask": 1.0, "lr": 0.1}, {"iteration": 4, "loss": 2.0, "loss_mask": 0.5, "lr": 0.1},
             {"iteration": 4, "loss": 1.5, "loss_mask": 0.4, "lr": 0.1}]  # iteration 4 again after a resume
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    frame = curves.read_metrics_jsonl(log)
    assert list(frame["iteration"]) == [2, 4] and list(frame["loss"]) == [3.0, 1.5]
    fig = curves.loss_curve(frame)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["loss_mask", "loss (total)"]
    log.write_text('{"iteration": 1}\nnot json\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        curves.read_metrics_jsonl(log)


def test_mmdet_zoo_names_released_files_and_numbers() -> None:
    from gcrepro.mmdet_zoo import entry_for_file, mmdet_model_of, mmdet_models

    models = mmdet_models()
    assert len(models) == 19 and len({m.entry for m in models}) == 19
    assert all(gcrepro.get_entry(m.entry).row == m.row for m in models)
    r8 = mmdet_model_of("mask_rcnn_r50_fpn_syncbn_gc_r16_1x")
    assert (r8.box_ap, r8.mask_ap) == (40.4, 36.2)
    assert r8.weights_file == "mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_20200202-587b99aa.pth"
    assert entry_for_file("/dl/" + r8.weights_file) == r8.entry
    assert entry_for_file("mask-rcnn_r50-syncbn-gcb-r16-c3-c5_fpn_1x_coco.pth") == r8.entry  # by config name
    assert entry_for_file("my_model.pth") is None and mmdet_model_of("mask_rcnn_r50_fpn_1x") is None
