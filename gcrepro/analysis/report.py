"""The table report: our runs beside the paper's numbers.

Reads every ``RUNS_DIR/<entry>/{status.json,metrics.json}`` (metrics through the one typed
reader, :mod:`gcrepro.run_metrics`), joins them with the paper's table (``gcrepro.list_entries()``)
and writes ``RUNS_DIR/report.csv`` and ``RUNS_DIR/report.html`` (a pandas Styler, Δ coloured by size).
Folders not named after an entry, or holding another entry's files, are skipped with a warning. Every
string from a run folder is HTML-escaped (:func:`gcrepro.analysis.notebook_support.styled`).

Every run's numbers carry their label (:func:`gcrepro.runspec.label_of`) in the ``data`` column, in
their cells and in the caption. Only ``coco`` runs (the paper profile on COCO val2017) get a Δ to the
paper; the GC gain is computed only against a baseline run of the same label, profile and val set.
"""
from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Protocol

import pandas as pd

from gcrepro.analysis import run_status
from gcrepro.analysis.notebook_support import hardware_text, styled
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
    parts.append("GC gain = entry minus the GC-off baseline of its group (same backbone, detector, norm, heads, "
                 "schedule); ours only against a baseline run with the same label, profile and val set.")
    parts.append("Mem, s/iter and fps are ours as measured on the run's hardware (see 'measured as'), paper values "
                 "from V100s.")
    return " ".join(parts)


def _delta_css(value: Any) -> str:
    """Green for gains, red for losses, stronger with size (saturating at 3 AP)."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return ""
    strength = min(abs(value) / 3.0, 1.0)
    rgb = (46, 160, 67) if value >= 0 else (218, 54, 51)
    return f"background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {0.15 + 0.6 * strength:.2f})"


def style_report(frame: pd.DataFrame, runs: list[dict[str, Any]] | None = None) -> "pd.io.formats.style.Styler":
    """A Styler for JupyterLab and report.html: grouped headers, Δ coloured, non-COCO cells marked with their label."""
    shown = frame.copy()
    shown.columns = pd.MultiIndex.from_tuples([COLUMNS[c] for c in frame.columns])
    # Cells, headers and caption escaped (dataset names, mem_kind, hardware come from run folders); the
    # formats below apply to numbers only.
    styler = styled(shown, caption=caption(frame, runs), precision=1).hide(axis="index")
    for col in ("train_s_per_iter", "paper_train_s_per_iter"):
        styler = styler.format("{:.3f}", subset=[COLUMNS[col]], na_rep="—")
    styler = styler.format(lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{int(v)}",
                           subset=[COLUMNS["row"]])
    for label in sorted(set(frame["data"]) - {"coco", ""}):
        rows = frame.index[frame["data"] == label]
        text = html.escape(label)
        styler = styler.format(lambda v, text=text: "—" if math.isnan(v) else f"{v:.1f}\u00a0{text}",
                               subset=(rows, [COLUMNS[c] for c in AP_COLUMNS]))
    styler = styler.map(_delta_css, subset=[COLUMNS[c] for c in DELTA_COLUMNS])
    styler = styler.set_table_styles([
        {"selector": "caption", "props": "caption-side: top; text-align: left; padding: 4px 0 8px; max-width: 90em"},
        {"selector": "th", "props": "text-align: center; padding: 2px 8px"},
        {"selector": "td", "props": "text-align: right; padding: 2px 8px; font-variant-numeric: tabular-nums"},
    ])
    return styler


def write_report(runs_dir: Path, *, entries: Iterable[EntryLike] | None = None) -> tuple[pd.DataFrame, Path, Path]:
    """Build the report over ``runs_dir``; write report.csv and report.html there (atomically)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs directory {runs_dir} does not exist")
    if entries is None:
        import gcrepro

        entries = gcrepro.list_entries()
    entries = list(entries)
    runs = load_runs(runs_dir, names=[e.name for e in entries])
    frame = report_frame(runs, entries)
    csv_path, html_path = runs_dir / "report.csv", runs_dir / "report.html"
    write_text_atomic(csv_path, frame.to_csv(index=False, float_format="%.4g"))
    others = sorted(set(frame["data"]) - {"coco", ""})
    title = "gcrepro: GCNet table, reproduced" + (f" ({', '.join(others)}: not COCO numbers)" if others else "")
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em} table{border-collapse:collapse}"
        " tr:nth-child(even){background:#f6f8fa}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{style_report(frame, runs).to_html()}\n</body></html>\n"
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
