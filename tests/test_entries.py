"""The table as data: 30 typed rows, names, paper numbers, lookup errors, groups, `gcrepro table list`."""
from __future__ import annotations

import argparse
import csv
import io

import pytest

import gcrepro
from gcrepro import entries as E
from gcrepro.entries import EntryNotFound, baseline_of, get_entry, group_of, list_entries, select_entries


def _csv_rows() -> list[dict[str, str]]:
    with open(E.TABLE_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def test_thirty_unique_names_in_row_order() -> None:
    entries = list_entries()
    assert [e.row for e in entries] == list(range(1, 31))
    assert len({e.name for e in entries}) == 30
    assert gcrepro.list_entries() == entries  # the package-level API
    for e in entries:
        assert e.name == e.name.lower() and " " not in e.name and e.name.endswith("_" + e.schedule)


@pytest.mark.parametrize("name,row", [
    ("mask_rcnn_r50_fpn_1x", 1), ("mask_rcnn_r50_fpn_gc_r16_1x", 2), ("mask_rcnn_r50_fpn_gc_r4_2x", 6),
    ("mask_rcnn_r50_fpn_syncbn_gc_r16_1x", 8), ("mask_rcnn_r50_fpn_syncbn_4conv1fc_gc_r4_1x", 15),
    ("mask_rcnn_r101_fpn_syncbn_1x", 19), ("mask_rcnn_x101_32x4d_fpn_syncbn_gc_r4_1x", 24),
    ("cascade_mask_rcnn_x101_32x4d_fpn_syncbn_1x", 25), ("cascade_mask_rcnn_x101_32x4d_fpn_dcn_syncbn_gc_r16_1x", 29),
])
def test_names_of_known_rows(name: str, row: int) -> None:
    assert get_entry(name).row == row
    assert get_entry(row).name == name
    assert get_entry(str(row)).name == name  # a row number as text (CLI arguments)


def test_paper_numbers_and_columns_match_the_csv() -> None:
    rows = _csv_rows()
    assert len(rows) == 30
    for rec, e in zip(rows, list_entries()):
        assert e.row == int(rec["row"])
        assert (e.backbone, e.model, e.heads, e.context, e.schedule, e.upstream_config) == (
            rec["backbone"], rec["model"], rec["heads"], rec["context"], rec["schedule"], rec["upstream_config"])
        assert e.norm == rec["backbone_norm"].lower()
        assert e.paper_box_ap == float(rec["box_ap"]) and e.paper_mask_ap == float(rec["mask_ap"])
        assert e.paper_mem_gb == _number(rec["mem_gb"])
        assert e.paper_train_s_per_iter == _number(rec["train_s_per_iter"])
        assert e.paper_inf_fps == _number(rec["inf_fps"])
    assert get_entry(4).paper_inf_fps is None and get_entry(1).paper_inf_fps == 10.6


def test_derived_model_fields() -> None:
    r1, r3, r5, r13, r17, r22, r28, r30 = (get_entry(r) for r in (1, 3, 5, 13, 17, 22, 28, 30))
    assert (r1.depth, r1.groups, r1.width_per_group, r1.gc, r1.gc_ratio, r1.dcn, r1.cascade, r1.head, r1.norm) == (
        50, 1, 64, False, None, False, False, "2fc", "fixbn")
    assert r3.gc and r3.gc_ratio == 0.25 and r3.context_short == "r4"
    assert r5.gc_ratio == 1 / 16 and (r5.epochs, r5.lr_steps) == (24, (16, 22))
    assert (r1.epochs, r1.lr_steps) == (12, (8, 11))
    assert r13.head == "4conv1fc" and r13.norm == "syncbn"
    assert r17.depth == 101 and r17.groups == 1
    assert (r22.depth, r22.groups, r22.width_per_group, r22.cascade) == (101, 32, 4, False)
    assert r28.cascade and r28.dcn and not r28.gc
    assert r30.cascade and r30.dcn and r30.gc_ratio == 0.25
    assert sum(e.cascade for e in list_entries()) == 6 and sum(e.dcn for e in list_entries()) == 3


def test_groups_and_baselines() -> None:
    entries = list_entries()
    groups = {e.group for e in entries}
    assert len(groups) == 10  # every group: none / r16 / r4
    for e in entries:
        members = group_of(e)
        assert [m.context for m in members] == ["none", "GC r16", "GC r4"]
        assert e in members and all(m.group == e.group for m in members)
        assert baseline_of(e) == members[0] and not baseline_of(e).gc
    assert baseline_of("mask_rcnn_r50_fpn_syncbn_gc_r4_1x").row == 7
    assert baseline_of(29).name == "cascade_mask_rcnn_x101_32x4d_fpn_dcn_syncbn_1x"
    assert get_entry(14).group_rows == (13, 14, 15) and get_entry(14).group == "mask_rcnn_r50_fpn_syncbn_4conv1fc_1x"


def test_get_entry_errors() -> None:
    with pytest.raises(EntryNotFound, match=r"unknown entry 'mask_rcnn_r50_fpn_gc_r8_1x'.*close matches: "
                                            r"mask_rcnn_r50_fpn_gc_r4_1x"):
        get_entry("mask_rcnn_r50_fpn_gc_r8_1x")
    with pytest.raises(EntryNotFound, match=r"no row 31 .*valid rows are 1\.\.30"):
        get_entry(31)
    with pytest.raises(EntryNotFound, match=r"valid rows are 1\.\.30"):
        get_entry(0)
    with pytest.raises(EntryNotFound, match="table list"):  # no close match: points to the list
        get_entry("retinanet")
    with pytest.raises(TypeError, match="entry name"):
        get_entry(2.0)  # type: ignore[arg-type]


def test_select_entries() -> None:
    assert [e.row for e in select_entries(rows="1-3,7")] == [1, 2, 3, 7]
    assert [e.row for e in select_entries(names="mask_rcnn_r50_fpn_syncbn_1x,mask_rcnn_r50_fpn_1x", rows=[1, 2])] == [
        1, 2, 7]
    assert len(select_entries()) == 30
    with pytest.raises(EntryNotFound, match=r"bad row range '28-31'.*1\.\.30"):
        select_entries(rows="1,28-31")
    with pytest.raises(ValueError, match=r"bad row range 'a-b'"):
        select_entries(rows="a-b")


def _table_list(capsys, *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="gcrepro table")
    E.register_cli(parser.add_subparsers(dest="table_command", required=True))
    args = parser.parse_args(["list", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_table_list_text_is_aligned(capsys) -> None:
    lines = _table_list(capsys, "--format", "text").splitlines()
    assert len(lines) == 32 and lines[0].split()[:2] == ["row", "name"] and set(lines[1]) <= {"-", " "}
    # every column starts at the same offset in every line: the separator line's dashes mark them
    starts = [i for i in range(len(lines[1])) if lines[1][i] == "-" and (i == 0 or lines[1][i - 1] == " ")]
    name_col = starts[1]
    for line, e in zip(lines[2:], list_entries()):
        assert line[name_col:].startswith(e.name + " ")
        assert line[:starts[1]].strip() == str(e.row)
    row8 = lines[2 + 7]
    assert "mask_rcnn_r50_fpn_syncbn_gc_r16_1x" in row8 and "39.4" in row8 and "0.547" in row8


def test_table_list_csv_and_markdown(capsys) -> None:
    rows = list(csv.DictReader(io.StringIO(_table_list(capsys, "--format", "csv"))))
    assert [r["name"] for r in rows] == [e.name for e in list_entries()]
    assert rows[3]["paper_mem_gb"] == "" and rows[0]["paper_box_ap"] == "37.3"
    md = _table_list(capsys, "--format", "markdown", "--rows", "1-3").splitlines()
    assert len(md) == 5 and all(line.startswith("|") and line.endswith("|") for line in md)
    assert "mask_rcnn_r50_fpn_gc_r4_1x" in md[4]
    only = _table_list(capsys, "--names", "mask_rcnn_r101_fpn_1x").splitlines()
    assert len(only) == 3 and "mask_rcnn_r101_fpn_1x" in only[2]
