"""The table report: our runs beside the paper's numbers.

Reads every ``RUNS_DIR/<entry>/{status.json,metrics.json}`` (metrics through the one typed
reader, :mod:`gcrepro.run_metrics`), joins them with the paper's table (``gcrepro.list_entries()``)
and writes ``RUNS_DIR/report.csv`` (every column), ``RUNS_DIR/report_ap.png`` (box AP, ours beside the
paper's, and the GC gains: :mod:`gcrepro.analysis.report_chart`) and ``RUNS_DIR/report.html`` (the chart,
a pandas Styler table with Δ coloured by size that fits a 1280 px window, and the notes: what each label
means, how Mem was measured, the hardware). Folders not named after an entry, or holding another entry's
files, are skipped with a warning; a folder with no run at all is an error that names what was searched,
and writes nothing (an earlier report stays). Every string from a run folder is HTML-escaped
(:func:`gcrepro.analysis.notebook_support.styled`).

Every run's numbers carry their label (:func:`gcrepro.runspec.label_of`) in the ``data`` column, in
their cells and in the caption. Only ``coco`` runs (the paper profile on COCO val2017) get a Δ to the
paper; the GC gain is computed only against a baseline run of the same label, profile and val set.
"""
from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Protocol

import pandas as pd

from gcrepro.analysis import run_status
from gcrepro.analysis.notebook_support import hardware_text, styled
from gcrepro.analysis.runs_dir import RunsDirError, table_folders
from gcrepro.atomic import write_text_atomic
from gcrepro.mmdet_zoo import SOURCE as MMDET_SOURCE
from gcrepro.mmdet_zoo import mmdet_model_of
from gcrepro.run_metrics import RunMetrics, read_metrics
from gcrepro.runspec import label_text

logger = logging.getLogger("gcrepro")


class EntryLike(Protocol):
    name: str
    row: int
    backbone: str
    model: str
    norm: str
    heads: str
    context: str
    schedule: str
    group: str  # rows sharing everything but the context column share a group
    gc: bool
    paper_box_ap: float
    paper_mask_ap: float
    paper_mem_gb: float | None
    paper_train_s_per_iter: float | None
    paper_inf_fps: float | None


# Machine column names (report.csv) -> display (group, name) in the HTML table.
COLUMNS: dict[str, tuple[str, str]] = {
    "row": ("", "row"),
    "entry": ("", "entry"),
    "data": ("", "data"),
    "dataset": ("", "dataset"),
    "state": ("", "state"),
    "paper_box_ap": ("box AP", "paper"),
    "mmdet_box_ap": ("box AP", "mmdet re-run"),
    "box_ap": ("box AP", "ours"),
    "delta_box_ap": ("box AP", "Δ"),
    "paper_mask_ap": ("mask AP", "paper"),
    "mmdet_mask_ap": ("mask AP", "mmdet re-run"),
    "mask_ap": ("mask AP", "ours"),
    "delta_mask_ap": ("mask AP", "Δ"),
    "paper_gc_gain_box_ap": ("GC gain box AP", "paper"),
    "gc_gain_box_ap": ("GC gain box AP", "ours"),
    "paper_gc_gain_mask_ap": ("GC gain mask AP", "paper"),
    "gc_gain_mask_ap": ("GC gain mask AP", "ours"),
    "mem_gb": ("Mem (GB)", "ours"),
    "paper_mem_gb": ("Mem (GB)", "paper"),
    "mem_kind": ("Mem (GB)", "measured as"),
    "train_s_per_iter": ("train s/iter", "ours"),
    "paper_train_s_per_iter": ("train s/iter", "paper"),
    "inf_fps": ("inference fps", "ours"),
    "paper_inf_fps": ("inference fps", "paper"),
    "hardware": ("", "hardware"),
}
AP_COLUMNS = ("box_ap", "mask_ap", "gc_gain_box_ap", "gc_gain_mask_ap")
DELTA_COLUMNS = ("delta_box_ap", "delta_mask_ap")
# report.html's columns (short headers, paper before ours): the dataset is in the notes, with how Mem was
# measured and the hardware, so that the table fits a 1280 px window.
HTML_COLUMNS: dict[str, tuple[str, str]] = {
    "row": ("", "row"), "entry": ("", "entry"), "data": ("", "data"), "state": ("", "state"),
    "paper_box_ap": ("box AP", "paper"), "mmdet_box_ap": ("box AP", "mmdet"), "box_ap": ("box AP", "ours"),
    "delta_box_ap": ("box AP", "Δ"),
    "paper_mask_ap": ("mask AP", "paper"), "mmdet_mask_ap": ("mask AP", "mmdet"), "mask_ap": ("mask AP", "ours"),
    "delta_mask_ap": ("mask AP", "Δ"),
    "paper_gc_gain_box_ap": ("GC gain, box", "paper"), "gc_gain_box_ap": ("GC gain, box", "ours"),
    "paper_gc_gain_mask_ap": ("GC gain, mask", "paper"), "gc_gain_mask_ap": ("GC gain, mask", "ours"),
    "paper_mem_gb": ("Mem GB", "paper"), "mem_gb": ("Mem GB", "ours"),
    "paper_train_s_per_iter": ("s/iter", "paper"), "train_s_per_iter": ("s/iter", "ours"),
    "paper_inf_fps": ("fps", "paper"), "inf_fps": ("fps", "ours"),
}
CSV_FILE, HTML_FILE, CHART_FILE = "report.csv", "report.html", "report_ap.png"


def load_runs(runs_dir: Path, *, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One record per entry folder holding status.json or metrics.json: {"entry", "state", "metrics", "dir"}.

    A run folder is ``RUNS_DIR/<entry name>`` (``names``: the table's; default gcrepro's). A folder with
    run files under any other name, or whose metrics.json / status.json records another entry, is skipped
    with a warning naming it: its numbers are not known to be the row's.
    """
    if names is None:
        import gcrepro

        names = [e.name for e in gcrepro.list_entries()]
    names = set(names)
    runs = []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()):
        status = run_status.read_status(run_dir)
        metrics = read_metrics(run_dir) if (run_dir / "metrics.json").is_file() else None
        if status is None and metrics is None:
            continue
        if run_dir.name not in names:
            logger.warning("report: %s skipped: %r is not an entry name (run folders are RUNS_DIR/<entry name>; "
                           "`gcrepro table list`)", run_dir, run_dir.name)
            continue
        recorded = {"metrics.json": metrics.entry if metrics else None, "status.json": (status or {}).get("entry")}
        other = [(file, str(entry)) for file, entry in recorded.items() if entry and str(entry) != run_dir.name]
        if other:
            logger.warning("report: %s skipped: its %s records entry %r, not the folder's %r",
                           run_dir, *other[0], run_dir.name)
            continue
        state = status["state"] if status else "done"
        runs.append({"entry": run_dir.name, "state": state, "metrics": metrics, "dir": str(run_dir)})
    return runs


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _comparable(a: RunMetrics, b: RunMetrics) -> bool:
    """Two runs whose AP may be subtracted: same label, same profile, same val set."""
    if a.label != b.label or a.profile != b.profile:
        return False
    if a.data is not None and b.data is not None:
        return a.data.val_sha256 == b.data.val_sha256
    return a.data is None and b.data is None  # two old files: only their label and profile are known


def report_frame(runs: list[dict[str, Any]], entries: Iterable[EntryLike]) -> pd.DataFrame:
    """The report table with machine column names (see COLUMNS), one row per run, in table order."""
    by_name = {e.name: e for e in entries}
    baselines = {e.group: e for e in by_name.values() if not e.gc}
    ours = {r["entry"]: r for r in runs}
    rows = []
    for run in runs:
        e = by_name.get(run["entry"])
        m: RunMetrics | None = run["metrics"]
        box, mask = _num(m.box_ap if m else None), _num(m.mask_ap if m else None)
        rerun = mmdet_model_of(e.name) if e else None
        row = {
            "row": e.row if e else math.nan, "entry": run["entry"], "data": m.label if m else "",
            "dataset": (m.data.name if m and m.data else ""), "state": run["state"],
            "paper_box_ap": _num(e.paper_box_ap) if e else math.nan,
            "paper_mask_ap": _num(e.paper_mask_ap) if e else math.nan,
            "mmdet_box_ap": rerun.box_ap if rerun else math.nan, "mmdet_mask_ap": rerun.mask_ap if rerun else math.nan,
            "box_ap": box, "mask_ap": mask,
            "mem_gb": _num(m.mem_gb if m else None), "paper_mem_gb": _num(e.paper_mem_gb) if e else math.nan,
            "mem_kind": (m.mem_kind or "") if m else "",
            "train_s_per_iter": _num(m.train_s_per_iter if m else None),
            "paper_train_s_per_iter": _num(e.paper_train_s_per_iter) if e else math.nan,
            "inf_fps": _num(m.inf_fps if m else None), "paper_inf_fps": _num(e.paper_inf_fps) if e else math.nan,
            "hardware": hardware_text(m.hardware if m else None),
        }
        # Δ to the paper only for the paper's profile on COCO val2017: anything else minus a COCO AP means nothing.
        coco = m is not None and m.label == "coco"
        row["delta_box_ap"] = box - row["paper_box_ap"] if coco else math.nan
        row["delta_mask_ap"] = mask - row["paper_mask_ap"] if coco else math.nan
        base = baselines.get(e.group) if e else None
        gains = dict.fromkeys(("paper_gc_gain_box_ap", "paper_gc_gain_mask_ap", "gc_gain_box_ap", "gc_gain_mask_ap"), math.nan)
        if base is not None and e.gc:
            gains["paper_gc_gain_box_ap"] = _num(e.paper_box_ap) - _num(base.paper_box_ap)
            gains["paper_gc_gain_mask_ap"] = _num(e.paper_mask_ap) - _num(base.paper_mask_ap)
            base_run = ours.get(base.name)
            bm: RunMetrics | None = base_run["metrics"] if base_run else None
            # Our gain needs our baseline with the same label, profile and val set.
            if m is not None and bm is not None and _comparable(m, bm):
                gains["gc_gain_box_ap"] = box - _num(bm.box_ap)
                gains["gc_gain_mask_ap"] = mask - _num(bm.mask_ap)
        row.update(gains)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values(["row", "entry"], na_position="last").reset_index(drop=True)


def caption(frame: pd.DataFrame, runs: list[dict[str, Any]] | None = None) -> str:
    """What every number in the table is: one sentence per label present."""
    return " ".join(_label_notes(frame, runs) + _method_notes())


def _label_notes(frame: pd.DataFrame, runs: list[dict[str, Any]] | None) -> list[str]:
    parts = ["Paper: COCO val2017 numbers from the GCNet table (Cao et al., 2019).",
             f"mmdet re-run: mmdetection's public re-run on COCO val2017 ({MMDET_SOURCE}), for the rows it covers."]
    texts: dict[str, str] = {}
    for run in runs or []:
        m: RunMetrics | None = run["metrics"]
        if m is not None:
            texts.setdefault(m.label, m.label_text)
    for label in ("coco", "toy", "coco-subset", "custom", "unverified"):
        n = int((frame["data"] == label).sum())
        if not n:
            continue
        text = texts.get(label) or label_text(label, None)
        if label == "coco":
            parts.append(f"{n} run(s) on COCO val2017 with the paper's profile: Δ = ours - paper.")
        else:
            parts.append(f"{n} run(s) labelled '{label}' ({text}): their AP is marked '{label}' and gets no Δ "
                         "to the paper.")
    return parts


def _method_notes() -> list[str]:
    return ["GC gain = entry minus the GC-off baseline of its group (same backbone, detector, norm, heads, "
            "schedule); ours only against a baseline run with the same label, profile and val set.",
            "Mem, s/iter and fps are ours as measured on the run's hardware, paper values from V100s."]


def _rows_text(rows: list[int]) -> str:
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(str(r) for r in rows)


def _grouped(frame: pd.DataFrame, column: str) -> str:
    """``"rows 1, 2: A; row 3: B"`` for the non-empty values of ``column``."""
    groups: dict[str, list[int]] = {}
    for _, r in frame.iterrows():
        if r[column] and not (isinstance(r["row"], float) and math.isnan(r["row"])):
            groups.setdefault(str(r[column]), []).append(int(r["row"]))
    return "; ".join(f"{_rows_text(rows)}: {value}" for value, rows in groups.items())


def notes(frame: pd.DataFrame, runs: list[dict[str, Any]] | None = None) -> list[str]:
    """The lines under report.html's table (plain text): labels, the datasets, how the costs were measured,
    the hardware, and what '—' means."""
    lines = _label_notes(frame, runs) + _method_notes()
    for what, column in (("Data", "dataset"), ("Mem measured as", "mem_kind"), ("Hardware", "hardware")):
        text = _grouped(frame, column)
        if text:
            lines.append(f"{what}: {text}.")
    lines.append("—: no number (not run or not measured yet, no baseline run to compare with, or a row the "
                 "paper or mmdetection does not report).")
    return lines


def _delta_css(value: Any) -> str:
    """Green for gains, red for losses, stronger with size (saturating at 3 AP)."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return ""
    strength = min(abs(value) / 3.0, 1.0)
    rgb = (46, 160, 67) if value >= 0 else (218, 54, 51)
    return f"background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {0.15 + 0.6 * strength:.2f})"


TABLE_CSS = [
    {"selector": "", "props": "font-size: 12.5px"},
    {"selector": "caption", "props": "caption-side: top; text-align: left; padding: 4px 0 8px; font-weight: 600"},
    {"selector": "th", "props": "text-align: center; padding: 2px 4px; white-space: nowrap"},
    {"selector": "td", "props": "text-align: right; padding: 2px 4px; font-variant-numeric: tabular-nums; "
                                "white-space: nowrap"},
    # entry names are long: they wrap (anywhere) inside a narrow column instead of widening the table
    {"selector": "td.col1", "props": "text-align: left; white-space: normal; overflow-wrap: anywhere; "
                                     "min-width: 9em; max-width: 12em"},
]


def style_report(frame: pd.DataFrame, runs: list[dict[str, Any]] | None = None) -> "pd.io.formats.style.Styler":
    """A Styler for JupyterLab and report.html: report.html's columns under short grouped headers, Δ coloured,
    non-COCO cells marked with their label (kept on one line with the number). The notes (:func:`notes`) say
    what the numbers are."""
    # the state column only when a run is not done (failed, running): "done" in every row says nothing
    columns = {k: v for k, v in HTML_COLUMNS.items() if k != "state" or (frame["state"] != "done").any()}
    shown = frame[list(columns)].copy()
    shown.columns = pd.MultiIndex.from_tuples(list(columns.values()))
    others = sorted(set(frame["data"]) - {"coco", ""})
    title = "GCNet table: ours beside the paper (AP in %" + (
        f"; {', '.join(others)} rows are not COCO numbers: see the notes)" if others else ")")
    # Cells, headers and caption escaped (the data label and state come from run folders); the formats below
    # apply to numbers only.
    styler = styled(shown, caption=title, precision=1).hide(axis="index")
    for col in ("train_s_per_iter", "paper_train_s_per_iter"):
        styler = styler.format("{:.3f}", subset=[HTML_COLUMNS[col]], na_rep="—")
    styler = styler.format(lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{int(v)}",
                           subset=[HTML_COLUMNS["row"]])
    for label in others:
        rows = frame.index[frame["data"] == label]
        text = html.escape(label)
        styler = styler.format(lambda v, text=text: "—" if math.isnan(v) else f"{v:.1f}\u00a0{text}",
                               subset=(rows, [HTML_COLUMNS[c] for c in AP_COLUMNS]))
    styler = styler.map(_delta_css, subset=[HTML_COLUMNS[c] for c in DELTA_COLUMNS])
    return styler.set_table_styles(TABLE_CSS)


BODY_START, BODY_END = "<!-- gcrepro report -->", "<!-- /gcrepro report -->"
PAGE_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em} h1{font-size:1.5em}"
            " table{border-collapse:collapse} tr:nth-child(even){background:#f6f8fa}")
BODY_CSS = (".gcrepro-report{max-width:1240px} .gcrepro-report img{max-width:100%;height:auto}"
            " .gcrepro-report ul{font-size:0.9em;padding-left:1.2em;margin-top:0.6em}")


def report_body(frame: pd.DataFrame, runs: list[dict[str, Any]], chart_png: bytes | None) -> str:
    """The chart (inline PNG), the table and the notes: report.html's content, shown as it is by report.ipynb."""
    chart = ""
    if chart_png:
        chart = (f"<p><img alt='box AP, ours beside the paper, and the GC gain' src='data:image/png;base64,"
                 f"{base64.b64encode(chart_png).decode('ascii')}'></p>\n")
    items = "".join(f"<li>{html.escape(line)}</li>" for line in notes(frame, runs))
    return (f"{BODY_START}\n<div class='gcrepro-report'><style>{BODY_CSS}</style>\n{chart}"
            f"{style_report(frame, runs).to_html()}\n<ul>{items}</ul></div>\n{BODY_END}")


def view(html_path: Path):
    """report.html's content (chart, table, notes) for a notebook: ``IPython.display.HTML``."""
    from IPython.display import HTML

    text = Path(html_path).read_text()
    start, end = text.find(BODY_START), text.find(BODY_END)
    if start < 0 or end < 0:
        raise ValueError(f"{html_path}: not a gcrepro report (no {BODY_START!r} marker); rebuild it with "
                         "report.ipynb or `gcrepro table report`")
    return HTML(text[start:end + len(BODY_END)])


def no_runs_message(runs_dir: Path, names: list[str]) -> str:
    """Why there is nothing to report: the folders searched and, where they are, the folders that hold runs."""
    searched = f"searched {runs_dir}/<entry>/ for the {len(names)} table entries (status.json or metrics.json)"
    elsewhere = [p for p in table_folders(runs_dir) if p != runs_dir]
    hint = (f"; runs are in {', '.join(str(p) for p in elsewhere)}: report that folder (runs_dir / --runs-dir)"
            if elsewhere else "; run `make demo` or `gcrepro table run` first")
    return f"no runs to report in {runs_dir}: {searched}{hint}. Nothing was written"


def write_report(runs_dir: Path, *, entries: Iterable[EntryLike] | None = None) -> tuple[pd.DataFrame, Path, Path]:
    """Build the report over ``runs_dir``; write report.csv, report_ap.png and report.html there (atomically).
    RunsDirError, with nothing written, when ``runs_dir`` is not a folder or holds no run."""
    from gcrepro.analysis.figures import save_figure
    from gcrepro.analysis.report_chart import ap_chart

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunsDirError(f"runs directory {runs_dir} " + ("is a file, expected a folder of runs"
                                                           if runs_dir.exists() else "does not exist"))
    if entries is None:
        import gcrepro

        entries = gcrepro.list_entries()
    entries = list(entries)
    runs = load_runs(runs_dir, names=[e.name for e in entries])
    if not runs:
        raise RunsDirError(no_runs_message(runs_dir, [e.name for e in entries]))
    frame = report_frame(runs, entries)
    csv_path, html_path, chart_path = runs_dir / CSV_FILE, runs_dir / HTML_FILE, runs_dir / CHART_FILE
    write_text_atomic(csv_path, frame.to_csv(index=False, float_format="%.4g"))
    chart = ap_chart(frame)
    chart_png = save_figure(chart, chart_path).read_bytes() if chart is not None else None
    if chart is None:
        chart_path.unlink(missing_ok=True)  # no AP of ours yet: an older chart would show other numbers
    others = sorted(set(frame["data"]) - {"coco", ""})
    title = "gcrepro: GCNet table, reproduced" + (f" ({', '.join(others)}: not COCO numbers)" if others else "")
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{report_body(frame, runs, chart_png)}\n</body></html>\n"
    )
    write_text_atomic(html_path, page)
    return frame, csv_path, html_path


MARKDOWN_COLUMNS = (
    "row", "entry", "data", "paper_box_ap", "box_ap", "delta_box_ap", "paper_mask_ap", "mask_ap", "delta_mask_ap",
    "paper_gc_gain_box_ap", "gc_gain_box_ap", "train_s_per_iter", "inf_fps",
)


def to_markdown(frame: pd.DataFrame) -> str:
    """The main columns as a Markdown table (for a README), non-COCO values marked, the caption below."""
    def cell(col: str, value: Any, label: str) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "—"
        if col == "row":
            return str(int(value))
        if isinstance(value, float):
            text = f"{value:.3f}" if col == "train_s_per_iter" else f"{value:.1f}"
            return f"{text} {label}" if label not in ("coco", "") and col in AP_COLUMNS else text
        return str(value)

    header = [" ".join(x for x in COLUMNS[c] if x) for c in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c], r["data"]) for c in MARKDOWN_COLUMNS) + " |")
    return "\n".join(lines) + "\n\n" + caption(frame) + "\n"
