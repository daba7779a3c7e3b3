"""The table report: joins runs with the paper's table, Δ and GC gains, toy labelling, files written."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import gcrepro
from gcrepro.analysis import curves, report, run_status
from gcrepro.analysis.notebook_support import coco_table


def _run(runs: Path, entry: str, *, box: float | None, mask: float | None, data: str = "toy", state: str = "done") -> None:
    folder = runs / entry
    run_status.write_status(folder, {"entry": entry, "state": state})
    if box is not None:
        metrics = {"entry": entry, "data": data, "bbox": {"AP": box}, "segm": {"AP": mask}, "mem_gb": 1.5,
                   "mem_kind": "cpu_peak_rss", "train_s_per_iter": 0.25, "inf_fps": 4.0,
                   "hardware": {"device": "cpu", "world_size": 1, "cpu": "Test CPU", "cpu_count": 2}}
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_rows_deltas_gains_and_toy_labels(tmp_path: Path) -> None:
    e = {r: gcrepro.get_entry(r) for r in (1, 2, 3, 7, 8, 9)}
    _run(tmp_path, e[1].name, box=20.0, mask=18.0)  # toy baseline of rows 1-3
    _run(tmp_path, e[2].name, box=23.5, mask=19.0)  # toy GC r16
    _run(tmp_path, e[3].name, box=None, mask=None, state="failed")  # failed before evaluation
    _run(tmp_path, e[7].name, box=36.2, mask=33.0, data="coco")  # COCO baseline of rows 7-9
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
    assert "synthetic TOY dataset" in html and "NOT COCO AP" in html
    assert "23.5 toy" in html and "3.5 toy" in html
    assert f"{39.9 - e[8].paper_box_ap:.1f}" in html
    assert "background-color: rgba(46, 160, 67" in html  # a gain is green
    assert "background-color: rgba(218, 54, 51" in html  # a loss (row 7: 36.2 < 37.2) is red
    markdown = report.to_markdown(frame)
    assert f"| 2 | {e[2].name} | toy | 38.5 | 23.5 toy | — |" in markdown and "NOT COCO AP" in markdown


def test_report_of_missing_or_broken_runs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    _run(tmp_path, "mask_rcnn_r50_fpn_1x", box=1.0, mask=1.0)
    (tmp_path / "mask_rcnn_r50_fpn_1x" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        report.write_report(tmp_path)


def test_coco_table_and_loss_log(tmp_path: Path) -> None:
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    metrics = {t: {k: float(i) for i, k in enumerate(keys)} for t in ("bbox", "segm")}
    metrics["segm"]["APl"] = None  # pycocotools -1: no large objects
    table = coco_table(metrics)
    assert table.shape == (2, 12) and table.loc["bbox", "AR100"] == 8.0 and math.isnan(table.loc["segm", "APl"])
    del metrics["bbox"]["AR1"]
    with pytest.raises(KeyError, match="AR1"):
        coco_table(metrics)

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
