"""The GCNet table as data: one typed, frozen ``Entry`` per row of ``paper_table.csv``.

The 30 rows come from the upstream GCNet README (Cao et al. 2019); each row names its
upstream mmdetection config. Names are stable and readable, built from the columns::

    {mask_rcnn|cascade_mask_rcnn}_{r50|r101|x101_32x4d}_fpn[_dcn][_syncbn][_4conv1fc][_gc_r16|_gc_r4]_{1x|2x}

``list_entries()``, ``get_entry(name_or_row)``, ``select_entries(names=..., rows="1-3,7")``,
``baseline_of(entry)`` (the GC-off row of the same group) and ``register_cli(table_sub)``
(``gcrepro table list``) are the public API.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

TABLE_CSV = Path(__file__).resolve().parent / "paper_table.csv"

_COLUMNS = (
    "row", "backbone", "model", "backbone_norm", "heads", "context", "schedule", "mem_gb",
    "train_s_per_iter", "inf_fps", "box_ap", "mask_ap", "upstream_config",
)

# column value -> (depth, groups, width_per_group, name token); SPEC §2.
_BACKBONES = {
    "R50-FPN": (50, 1, 64, "r50"),
    "R101-FPN": (101, 1, 64, "r101"),
    "X101-FPN": (101, 32, 4, "x101_32x4d"),  # ResNeXt-101 32x4d
}
# column value -> (cascade, dcn, name token)
_MODELS = {
    "Mask": (False, False, "mask_rcnn"),
    "Cascade Mask": (True, False, "cascade_mask_rcnn"),
    "DCN Cascade Mask": (True, True, "cascade_mask_rcnn"),
}
_NORMS = {"fixBN": "fixbn", "SyncBN": "syncbn"}
_HEADS = {"2fc": "2fc", "4conv1fc (SyncBN)": "4conv1fc"}
# column value -> (gc ratio or None, name token); r16 = ratio 1/16, r4 = ratio 1/4 (SPEC §1).
_CONTEXTS = {"none": (None, ""), "GC r16": (1.0 / 16.0, "gc_r16"), "GC r4": (1.0 / 4.0, "gc_r4")}
# schedule -> (epochs, lr step epochs); SPEC §4.
_SCHEDULES = {"1x": (12, (8, 11)), "2x": (24, (16, 22))}


@dataclass(frozen=True)
class Entry:
    """One row of the paper's table, with the model facts derived from its columns."""

    name: str
    row: int
    # the table's columns, as printed in the paper
    backbone: str  # "R50-FPN" | "R101-FPN" | "X101-FPN"
    model: str  # "Mask" | "Cascade Mask" | "DCN Cascade Mask"
    norm: str  # "fixbn" | "syncbn" (backbone norm)
    heads: str  # "2fc" | "4conv1fc (SyncBN)"
    context: str  # "none" | "GC r16" | "GC r4"
    schedule: str  # "1x" | "2x"
    epochs: int  # 12 | 24
    lr_steps: tuple[int, int]  # (8, 11) | (16, 22)
    paper_box_ap: float
    paper_mask_ap: float
    paper_mem_gb: float | None
    paper_train_s_per_iter: float | None
    paper_inf_fps: float | None
    upstream_config: str
    # derived model facts
    depth: int  # 50 | 101
    groups: int  # 1 | 32
    width_per_group: int  # 64 | 4
    gc: bool
    gc_ratio: float | None  # 1/16, 1/4 or None
    dcn: bool
    cascade: bool
    head: str  # "2fc" | "4conv1fc"
    # rows that share everything but the context column, and their key
    group: str
    group_rows: tuple[int, ...]

    @property
    def context_short(self) -> str:
        """"none", "r16" or "r4"."""
        return "none" if self.gc_ratio is None else f"r{round(1 / self.gc_ratio)}"


class EntryNotFound(LookupError):
    """An unknown entry name or row number."""


def _optional_float(text: str, *, key: str, row: str) -> float | None:
    text = text.strip()
    if text in ("", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{TABLE_CSV}: row {row}, column {key!r}: expected a number or blank, got {text!r}") from None


def _lookup(table: dict, value: str, *, key: str, row: str):
    if value not in table:
        raise ValueError(
            f"{TABLE_CSV}: row {row}, column {key!r}: unknown value {value!r}; expected one of {sorted(table)}"
        )
    return table[value]


def _name(*, model_token: str, backbone_token: str, dcn: bool, norm: str, head: str, context_token: str,
          schedule: str) -> str:
    parts = [model_token, backbone_token, "fpn"]
    if dcn:
        parts.append("dcn")
    if norm == "syncbn":
        parts.append("syncbn")
    if head == "4conv1fc":
        parts.append("4conv1fc")
    if context_token:
        parts.append(context_token)
    parts.append(schedule)
    return "_".join(parts)


def _parse_table(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{TABLE_CSV}: missing columns {missing}; expected columns {list(_COLUMNS)}")
    rows = []
    for rec in reader:
        r = rec["row"].strip()
        depth, groups, width_per_group, backbone_token = _lookup(_BACKBONES, rec["backbone"], key="backbone", row=r)
        cascade, dcn, model_token = _lookup(_MODELS, rec["model"], key="model", row=r)
        norm = _lookup(_NORMS, rec["backbone_norm"], key="backbone_norm", row=r)
        head = _lookup(_HEADS, rec["heads"], key="heads", row=r)
        gc_ratio, context_token = _lookup(_CONTEXTS, rec["context"], key="context", row=r)
        epochs, lr_steps = _lookup(_SCHEDULES, rec["schedule"], key="schedule", row=r)
        box_ap = _optional_float(rec["box_ap"], key="box_ap", row=r)
        mask_ap = _optional_float(rec["mask_ap"], key="mask_ap", row=r)
        if box_ap is None or mask_ap is None:
            raise ValueError(f"{TABLE_CSV}: row {r}: box_ap and mask_ap are required, got {rec['box_ap']!r}, "
                             f"{rec['mask_ap']!r}")
        common = dict(model_token=model_token, backbone_token=backbone_token, dcn=dcn, norm=norm, head=head,
                      schedule=rec["schedule"])
        rows.append(dict(
            name=_name(context_token=context_token, **common),
            group=_name(context_token="", **common),
            row=int(r),
            backbone=rec["backbone"], model=rec["model"], norm=norm, heads=rec["heads"], context=rec["context"],
            schedule=rec["schedule"], epochs=epochs, lr_steps=lr_steps,
            paper_box_ap=box_ap, paper_mask_ap=mask_ap,
            paper_mem_gb=_optional_float(rec["mem_gb"], key="mem_gb", row=r),
            paper_train_s_per_iter=_optional_float(rec["train_s_per_iter"], key="train_s_per_iter", row=r),
            paper_inf_fps=_optional_float(rec["inf_fps"], key="inf_fps", row=r),
            upstream_config=rec["upstream_config"],
            depth=depth, groups=groups, width_per_group=width_per_group,
            gc=gc_ratio is not None, gc_ratio=gc_ratio, dcn=dcn, cascade=cascade, head=head,
        ))
    return rows


@functools.cache
def _entries() -> tuple[Entry, ...]:
    rows = _parse_table(TABLE_CSV.read_text())
    members: dict[str, list[int]] = {}
    for rec in rows:
        members.setdefault(rec["group"], []).append(rec["row"])
    entries = tuple(Entry(group_rows=tuple(members[rec["group"]]), **rec) for rec in sorted(rows, key=lambda x: x["row"]))
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{TABLE_CSV}: entry names are not unique: {dupes}")
    if [e.row for e in entries] != list(range(1, len(entries) + 1)):
        raise ValueError(f"{TABLE_CSV}: rows must be numbered 1..{len(entries)} without gaps")
    return entries


def list_entries() -> list[Entry]:
    """All rows of the paper's table, in row order."""
    return list(_entries())


def get_entry(name_or_row: str | int | Entry) -> Entry:
    """The entry with this name or row number (an int, or a string of digits)."""
    if isinstance(name_or_row, Entry):
        return name_or_row
    entries = _entries()
    if isinstance(name_or_row, int) or (isinstance(name_or_row, str) and name_or_row.strip().isdigit()):
        row = int(name_or_row)
        if not 1 <= row <= len(entries):
            raise EntryNotFound(f"no row {row} in the GCNet table: valid rows are 1..{len(entries)}")
        return entries[row - 1]
    if not isinstance(name_or_row, str):
        raise TypeError(f"get_entry expects an entry name (str) or row number (int), got {type(name_or_row).__name__}")
    for e in entries:
        if e.name == name_or_row:
            return e
    close = difflib.get_close_matches(name_or_row, [e.name for e in entries], n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise EntryNotFound(
        f"unknown entry {name_or_row!r}{hint} (`gcrepro table list` prints all names; rows are 1..{len(entries)})"
    )


def parse_rows(spec: str) -> list[int]:
    """``"1-3,7"`` -> ``[1, 2, 3, 7]``; every row must exist."""
    n = len(_entries())
    rows: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise ValueError(f"bad row range {part!r} in {spec!r}: expected forms like '1-3,7'") from None
        if a > b or a < 1 or b > n:
            raise EntryNotFound(f"bad row range {part!r} in {spec!r}: valid rows are 1..{n}")
        rows.extend(range(a, b + 1))
    return rows


def select_entries(names: list[str] | str | None = None, rows: str | list[int] | None = None) -> list[Entry]:
    """Entries named in ``names`` (list, or comma-separated string) and/or in ``rows``
    (``"1-3,7"`` or a list of ints), deduplicated, in row order; all entries when both are None."""
    if names is None and rows is None:
        return list_entries()
    picked: dict[int, Entry] = {}
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    for n in names or []:
        e = get_entry(n.strip())
        picked[e.row] = e
    row_list = parse_rows(rows) if isinstance(rows, str) else list(rows or [])
    for r in row_list:
        e = get_entry(int(r))
        picked[e.row] = e
    return [picked[r] for r in sorted(picked)]


def group_of(entry: Entry | str | int) -> list[Entry]:
    """The rows that share everything but the context column with ``entry`` (itself included)."""
    e = get_entry(entry)
    return [get_entry(r) for r in e.group_rows]


def baseline_of(entry: Entry | str | int) -> Entry:
    """The GC-off row of ``entry``'s group (the entry itself when it is GC-off)."""
    for member in group_of(entry):
        if not member.gc:
            return member
    raise EntryNotFound(f"group {get_entry(entry).group!r} has no GC-off row")


# ---------------------------------------------------------------- `gcrepro table list`

# (Entry attribute, column title, number format)
_LIST_COLUMNS = (
    ("row", "row", ""), ("name", "name", ""), ("backbone", "backbone", ""), ("model", "model", ""),
    ("norm", "norm", ""), ("heads", "heads", ""), ("context", "context", ""), ("schedule", "sched", ""),
    ("paper_box_ap", "box AP", ".1f"), ("paper_mask_ap", "mask AP", ".1f"), ("paper_mem_gb", "mem GB", ".1f"),
    ("paper_train_s_per_iter", "s/iter", ".3f"), ("paper_inf_fps", "fps", ".1f"),
)


def _cell(value, number_format: str) -> str:
    if value is None:
        return ""
    return format(value, number_format) if number_format else str(value)


def format_table(entries: list[Entry], fmt: str = "text") -> str:
    """The entries as an aligned text table, CSV, or a Markdown table."""
    header = [title for _, title, _ in _LIST_COLUMNS]
    body = [[_cell(getattr(e, key), number_format) for key, _, number_format in _LIST_COLUMNS] for e in entries]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([key for key, _, _ in _LIST_COLUMNS])
        writer.writerows(body)
        return out.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r}; expected text, csv or markdown")
    numeric = {"row", "box AP", "mask AP", "mem GB", "s/iter", "fps"}
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if h in numeric else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body]) + "\n"


def _cmd_list(args: argparse.Namespace) -> int:
    entries = select_entries(names=args.names, rows=args.rows)
    print(format_table(entries, args.format), end="")
    return 0


def register_cli(table_sub) -> None:
    """Add ``gcrepro table list`` to the ``table`` subcommand group."""
    p = table_sub.add_parser("list", help="print the paper's table (30 rows) with entry names",
                             description="Print the GCNet table: one row per entry, with its name and paper numbers.")
    p.add_argument("--format", choices=("text", "csv", "markdown"), default="text", help="output format")
    p.add_argument("--rows", default=None, help="rows to print, e.g. '1-3,7' (default: all)")
    p.add_argument("--names", default=None, help="comma-separated entry names to print")
    p.set_defaults(func=_cmd_list)
