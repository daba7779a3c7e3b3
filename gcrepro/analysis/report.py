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

Seeds: an entry folder holding ``seed<k>/`` runs (``gcrepro table run --seeds``) is reported as the mean
± sample std over its finished seed runs, with n; a single run shows its number and n = 1. The GC gain is
the difference of the means with a 95% t interval, paired by seed when GC and baseline ran the same seeds,
else Welch's, none when either side has n < 2 (:mod:`gcrepro.analysis.stats`); "not significant" when the
interval contains 0. The paper's numbers are single published values, with no seed spread.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Protocol

import pandas as pd

from gcrepro.analysis import run_status
from gcrepro.analysis.notebook_support import hardware_text, styled
from gcrepro.analysis.runs_dir import RunsDirError, seed_runs, table_folders
from gcrepro.analysis.seeds import seed_of
from gcrepro.analysis.stats import Gain, gain, mean_std
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
    "n": ("", "n"),  # finished (evaluated) runs of the entry: one per seed
    "seeds": ("", "seeds"),
    "paper_box_ap": ("box AP", "paper"),
    "mmdet_box_ap": ("box AP", "mmdet re-run"),
    "box_ap": ("box AP", "ours"),  # the mean over the n runs
    "box_ap_std": ("box AP", "ours std"),  # sample std (n - 1); empty for n = 1
    "delta_box_ap": ("box AP", "Δ"),
    "paper_mask_ap": ("mask AP", "paper"),
    "mmdet_mask_ap": ("mask AP", "mmdet re-run"),
    "mask_ap": ("mask AP", "ours"),
    "mask_ap_std": ("mask AP", "ours std"),
    "delta_mask_ap": ("mask AP", "Δ"),
    "paper_gc_gain_box_ap": ("GC gain box AP", "paper"),
    "gc_gain_box_ap": ("GC gain box AP", "ours"),  # GC mean - baseline mean
    "gc_gain_box_ci_low": ("GC gain box AP", "95% CI low"),
    "gc_gain_box_ci_high": ("GC gain box AP", "95% CI high"),
    "gc_gain_box_significant": ("GC gain box AP", "significant"),  # the interval excludes 0; empty: no interval
    "gc_gain_box_test": ("GC gain box AP", "interval"),  # paired / welch (with df), or why there is none
    "paper_gc_gain_mask_ap": ("GC gain mask AP", "paper"),
    "gc_gain_mask_ap": ("GC gain mask AP", "ours"),
    "gc_gain_mask_ci_low": ("GC gain mask AP", "95% CI low"),
    "gc_gain_mask_ci_high": ("GC gain mask AP", "95% CI high"),
    "gc_gain_mask_significant": ("GC gain mask AP", "significant"),
    "gc_gain_mask_test": ("GC gain mask AP", "interval"),
    "mem_gb": ("Mem (GB)", "ours"),
    "paper_mem_gb": ("Mem (GB)", "paper"),
    "mem_kind": ("Mem (GB)", "measured as"),
    "train_s_per_iter": ("train s/iter", "ours"),
    "paper_train_s_per_iter": ("train s/iter", "paper"),
    "inf_fps": ("inference fps", "ours"),
    "paper_inf_fps": ("inference fps", "paper"),
    "hardware": ("", "hardware"),
}
DELTA_COLUMNS = ("delta_box_ap", "delta_mask_ap")
# report.html's columns (short headers, paper before ours): the dataset is in the notes, with how Mem was
# measured and the hardware, so that the table fits a 1280 px window.
HTML_COLUMNS: dict[str, tuple[str, str]] = {
    "row": ("", "row"), "entry": ("", "entry"), "data": ("", "data"), "state": ("", "state"), "n": ("", "n"),
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
    """One record per run: {"entry", "seed", "state", "metrics", "dir"}, in folder order.

    A run is ``RUNS_DIR/<entry name>`` holding status.json or metrics.json, or, for a seeded table run, each
    ``RUNS_DIR/<entry name>/seed<k>`` (``seed``: k; else the seed its metrics.json records, None for old files).
    An entry folder holding seed runs is reported by those; its own files, if any, are left out with a warning.
    A folder with run files under a name that is not an entry (``names``: the table's; default gcrepro's), or
    whose metrics.json / status.json records another entry (or a seed<k> folder another seed), is skipped with
    a warning naming it: its numbers are not known to be the row's.
    """
    if names is None:
        import gcrepro

        names = [e.name for e in gcrepro.list_entries()]
    names = set(names)
    runs = []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()):
        seeded = seed_runs(run_dir) if run_dir.name in names else []
        if seeded:
            if run_status.read_status(run_dir) is not None or (run_dir / "metrics.json").is_file():
                logger.warning("report: %s holds a run of its own beside its seed runs (%s); reported: the seed "
                               "runs", run_dir, ", ".join(p.name for p in seeded))
            runs += [r for r in (_record(p, run_dir.name, seed_of(p)) for p in seeded) if r is not None]
            continue
        if run_dir.name not in names:
            if run_status.read_status(run_dir) is not None or (run_dir / "metrics.json").is_file():
                logger.warning("report: %s skipped: %r is not an entry name (run folders are RUNS_DIR/<entry name>; "
                               "`gcrepro table list`)", run_dir, run_dir.name)
            continue
        record = _record(run_dir, run_dir.name, None)
        if record is not None:
            runs.append(record)
    return runs


def _record(run_dir: Path, entry: str, seed: int | None) -> dict[str, Any] | None:
    """The run in ``run_dir`` of ``entry`` (``seed``: its seed folder's k); None when it holds no run files or
    records another entry or seed (with a warning)."""
    status = run_status.read_status(run_dir)
    metrics = read_metrics(run_dir) if (run_dir / "metrics.json").is_file() else None
    if status is None and metrics is None:
        return None
    recorded = {"metrics.json": metrics.entry if metrics else None, "status.json": (status or {}).get("entry")}
    other = [(file, str(name)) for file, name in recorded.items() if name and str(name) != entry]
    if other:
        logger.warning("report: %s skipped: its %s records entry %r, not the folder's %r", run_dir, *other[0], entry)
        return None
    trained_seed = metrics.spec.train.seed if metrics is not None and metrics.spec is not None else None
    if seed is not None and trained_seed is not None and trained_seed != seed:
        logger.warning("report: %s skipped: its metrics.json records seed %d, not the folder's %d",
                       run_dir, trained_seed, seed)
        return None
    state = status["state"] if status else "done"
    return {"entry": entry, "seed": seed if seed is not None else trained_seed, "state": state, "metrics": metrics,
            "dir": str(run_dir)}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _comparable(a: RunMetrics, b: RunMetrics) -> bool:
    """Two runs whose AP may be subtracted: same label, same profile, same val set."""
    if a.label != b.label or a.profile != b.profile:
        return False
    if a.data is not None and b.data is not None:
        return a.data.val_sha256 == b.data.val_sha256
    return a.data is None and b.data is None  # two old files: only their label and profile are known


@dataclasses.dataclass(frozen=True)
class EntryRuns:
    """One entry's runs as the report sees them: the comparable finished ones, by seed."""

    reference: RunMetrics | None  # the first finished run (its label, profile and val set), else any run's metrics
    box: dict[int, float]  # seed -> box AP of the finished runs comparable with ``reference``
    mask: dict[int, float]
    runs: list[dict[str, Any]]  # all its run records (any state)
    used: list[dict[str, Any]]  # the records of ``box`` / ``mask``

    @property
    def n(self) -> int:
        return len(self.box)


def _entry_runs(records: list[dict[str, Any]]) -> EntryRuns:
    """Group one entry's run records: finished runs comparable with the first finished one, keyed by seed. A
    finished run on another label, profile or val set is left out of the mean, with a warning."""
    finished = [r for r in records if r["metrics"] is not None and r["metrics"].box_ap is not None
                and r["metrics"].mask_ap is not None]
    for r in [r for r in finished if not (_finite(r["metrics"].box_ap) and _finite(r["metrics"].mask_ap))]:
        logger.warning("report: %s left out of %s's mean: its AP is not a finite number (box %r, mask %r)",
                       r["dir"], r["entry"], r["metrics"].box_ap, r["metrics"].mask_ap)
        finished.remove(r)
    reference = finished[0]["metrics"] if finished else next((r["metrics"] for r in records if r["metrics"]), None)
    box: dict[int, float] = {}
    mask: dict[int, float] = {}
    used = []
    for i, r in enumerate(finished):
        m: RunMetrics = r["metrics"]
        if not _comparable(m, reference):
            logger.warning("report: %s left out of %s's mean: its AP is %s (%s profile), not comparable with %s",
                           r["dir"], r["entry"], m.label_text, m.profile, finished[0]["dir"])
            continue
        key = r["seed"] if r["seed"] is not None else -1 - i  # old files record no seed: one run, its own key
        box[key], mask[key] = float(m.box_ap), float(m.mask_ap)
        used.append(r)
    return EntryRuns(reference=reference, box=box, mask=mask, runs=records, used=used)


def _state(records: list[dict[str, Any]]) -> str:
    """``done`` when every run is; else the count of each state (``2 done, 1 failed``)."""
    states = [r["state"] for r in records]
    if len(set(states)) == 1:
        return states[0]
    return ", ".join(f"{states.count(s)} {s}" for s in run_status.STATES if s in states)


def _mean_of(records: list[dict[str, Any]], field: str) -> float:
    values = [v for v in (getattr(r["metrics"], field) for r in records if r["metrics"] is not None)
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return mean_std(values).mean if values else math.nan


def _gain_columns(prefix: str, result: Gain | None) -> dict[str, Any]:
    """``gc_gain_<prefix>_*``: the mean gain, its interval, significance and how it was computed (or why not)."""
    out: dict[str, Any] = {f"gc_gain_{prefix}_ap": math.nan, f"gc_gain_{prefix}_ci_low": math.nan,
                           f"gc_gain_{prefix}_ci_high": math.nan, f"gc_gain_{prefix}_significant": None,
                           f"gc_gain_{prefix}_test": ""}
    if result is None:
        return out
    out[f"gc_gain_{prefix}_ap"] = result.mean
    ci = result.interval
    if ci is None:
        out[f"gc_gain_{prefix}_test"] = result.why
        return out
    out.update({f"gc_gain_{prefix}_ci_low": ci.low, f"gc_gain_{prefix}_ci_high": ci.high,
                f"gc_gain_{prefix}_significant": ci.significant,
                f"gc_gain_{prefix}_test": f"{'paired' if ci.method == 'paired' else 'Welch'}, df {ci.df:.3g}"})
    return out


def report_frame(runs: list[dict[str, Any]], entries: Iterable[EntryLike]) -> pd.DataFrame:
    """The report table with machine column names (see COLUMNS), one row per entry (its runs' mean ± std and n),
    in table order."""
    by_name = {e.name: e for e in entries}
    baselines = {e.group: e for e in by_name.values() if not e.gc}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["entry"], []).append(run)
    ours = {name: _entry_runs(records) for name, records in grouped.items()}
    rows = []
    for name, er in ours.items():
        e = by_name.get(name)
        m = er.reference
        box, mask = mean_std(list(er.box.values())) if er.n else None, mean_std(list(er.mask.values())) if er.n else None
        source = er.used or er.runs  # the costs: of the runs averaged, else of whatever ran
        rerun = mmdet_model_of(e.name) if e else None
        row = {
            "row": e.row if e else math.nan, "entry": name, "data": m.label if m else "",
            "dataset": (m.data.name if m and m.data else ""), "state": _state(er.runs), "n": er.n,
            "seeds": ",".join(str(k) for k in sorted(er.box) if k >= 0),
            "paper_box_ap": _num(e.paper_box_ap) if e else math.nan,
            "paper_mask_ap": _num(e.paper_mask_ap) if e else math.nan,
            "mmdet_box_ap": rerun.box_ap if rerun else math.nan, "mmdet_mask_ap": rerun.mask_ap if rerun else math.nan,
            "box_ap": box.mean if box else math.nan, "box_ap_std": box.std if box else math.nan,
            "mask_ap": mask.mean if mask else math.nan, "mask_ap_std": mask.std if mask else math.nan,
            "mem_gb": _mean_of(source, "mem_gb"), "paper_mem_gb": _num(e.paper_mem_gb) if e else math.nan,
            "mem_kind": (m.mem_kind or "") if m else "",
            "train_s_per_iter": _mean_of(source, "train_s_per_iter"),
            "paper_train_s_per_iter": _num(e.paper_train_s_per_iter) if e else math.nan,
            "inf_fps": _mean_of(source, "inf_fps"), "paper_inf_fps": _num(e.paper_inf_fps) if e else math.nan,
            "hardware": " / ".join(dict.fromkeys(hardware_text(r["metrics"].hardware) for r in source
                                                 if r["metrics"] is not None and r["metrics"].hardware)),
        }
        # Δ to the paper only for the paper's profile on COCO val2017: anything else minus a COCO AP means nothing.
        coco = m is not None and m.label == "coco"
        row["delta_box_ap"] = row["box_ap"] - row["paper_box_ap"] if coco else math.nan
        row["delta_mask_ap"] = row["mask_ap"] - row["paper_mask_ap"] if coco else math.nan
        base = baselines.get(e.group) if e else None
        row["paper_gc_gain_box_ap"] = row["paper_gc_gain_mask_ap"] = math.nan
        box_gain = mask_gain = None
        if base is not None and e.gc:
            row["paper_gc_gain_box_ap"] = _num(e.paper_box_ap) - _num(base.paper_box_ap)
            row["paper_gc_gain_mask_ap"] = _num(e.paper_mask_ap) - _num(base.paper_mask_ap)
            b = ours.get(base.name)
            # Our gain needs our baseline with the same label, profile and val set.
            if er.n and b is not None and b.n and _comparable(m, b.reference):
                box_gain, mask_gain = gain(er.box, b.box), gain(er.mask, b.mask)
        row.update(_gain_columns("box", box_gain))
        row.update(_gain_columns("mask", mask_gain))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values(["row", "entry"], na_position="last").reset_index(drop=True)


def caption(frame: pd.DataFrame, runs: list[dict[str, Any]] | None = None) -> str:
    """What every number in the table is: one sentence per label present."""
    return " ".join(_label_notes(frame, runs) + _method_notes())


def _label_notes(frame: pd.DataFrame, runs: list[dict[str, Any]] | None) -> list[str]:
    parts = ["Paper: COCO val2017 numbers from the GCNet table (Cao et al., 2019), single published numbers with "
             "no seed spread (no std, no interval).",
             f"mmdet re-run: mmdetection's public re-run on COCO val2017 ({MMDET_SOURCE}), for the rows it covers, "
             "one run each."]
    texts: dict[str, str] = {}
    for run in runs or []:
        m: RunMetrics | None = run["metrics"]
        if m is not None:
            texts.setdefault(m.label, m.label_text)
    for label in ("coco", "toy", "coco-subset", "custom", "unverified"):
        rows = frame["data"] == label
        if not rows.any():
            continue
        count = f"{int(rows.sum())} entr{'y' if rows.sum() == 1 else 'ies'} ({int(frame.loc[rows, 'n'].sum())} run(s))"
        text = texts.get(label) or label_text(label, None)
        if label == "coco":
            parts.append(f"{count} on COCO val2017 with the paper's profile: Δ = ours - paper.")
        else:
            parts.append(f"{count} labelled '{label}' ({text}): their AP is marked '{label}' and gets no Δ "
                         "to the paper.")
    return parts


def _method_notes() -> list[str]:
    return ["Ours: the mean ± sample std (n - 1) over the entry's n finished runs, one per seed "
            "(`gcrepro table run --seeds`); n = 1: that run's number, no std.",
            "GC gain = entry minus the GC-off baseline of its group (same backbone, detector, norm, heads, "
            "schedule); ours only against a baseline run with the same label, profile and val set: the difference "
            "of the means, with a 95% t interval, paired by seed (df = n - 1) when both ran the same seeds, else "
            "Welch's (Welch-Satterthwaite df); 'not significant': the interval contains 0; 'no interval': n < 2 "
            "on either side (n of the GC entry vs its baseline).",
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
    seeded = "; ours: mean ± std over n seeds" if (frame["n"] > 1).any() else ""
    title = f"GCNet table: ours beside the paper (AP in %{seeded}" + (
        f"; {', '.join(others)} rows are not COCO numbers: see the notes)" if others else ")")
    # Cells, headers and caption escaped (the data label and state come from run folders); the formats below
    # apply to numbers only.
    styler = styled(shown, caption=title, precision=1).hide(axis="index")
    for col in ("train_s_per_iter", "paper_train_s_per_iter"):
        styler = styler.format("{:.3f}", subset=[HTML_COLUMNS[col]], na_rep="—")
    styler = styler.format(lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{int(v)}",
                           subset=[HTML_COLUMNS["row"]])
    for i, r in frame.iterrows():
        # ours: mean ± std and the label on one line; the gain's interval below it (set per cell)
        mark = "" if r["data"] in ("coco", "") else f"\u00a0{html.escape(str(r['data']))}"
        cells = {c: ap_html(r[c], r[f"{c}_std"], mark) for c in ("box_ap", "mask_ap")}
        cells.update({f"gc_gain_{p}_ap": gain_html(r, p, mark) for p in ("box", "mask")})
        for column, text in cells.items():
            styler = styler.format(lambda v, text=text: text, subset=([i], [HTML_COLUMNS[column]]))
    styler = styler.map(_delta_css, subset=[HTML_COLUMNS[c] for c in DELTA_COLUMNS])
    return styler.set_table_styles(TABLE_CSS)


def ap_text(mean: float, std: float, mark: str) -> str:
    """Our AP as text: ``mean ± std`` (std only for n > 1) and the label mark; "—" without a number."""
    if not _finite(mean):
        return "—"
    return f"{mean:.1f}" + (f" ± {std:.1f}" if _finite(std) else "") + mark


def ap_html(mean: float, std: float, mark: str) -> str:
    """Our AP cell: the mean and the label mark, ``± std`` below it (n > 1: the table stays 1280 px wide)."""
    if not _finite(mean):
        return "—"
    return f"{mean:.1f}{mark}" + (f"<br><span class='gcrepro-ci'>±\u00a0{std:.1f}</span>" if _finite(std) else "")


def gain_html(row: pd.Series, prefix: str, mark: str) -> str:
    """Our GC gain cell: the mean gain and label; below it the 95% interval and its method, and "not significant"
    when it contains 0, or why there is no interval."""
    value = row[f"gc_gain_{prefix}_ap"]
    if not _finite(value):
        return "—"
    text = f"{value:+.1f}{mark}"
    low, high, test = row[f"gc_gain_{prefix}_ci_low"], row[f"gc_gain_{prefix}_ci_high"], row[f"gc_gain_{prefix}_test"]
    if _finite(low):
        text += f"<br><span class='gcrepro-ci'>[{low:+.1f}, {high:+.1f}] {html.escape(test.split(',')[0])}</span>"
        if not row[f"gc_gain_{prefix}_significant"]:
            text += "<br><span class='gcrepro-ns'>not significant</span>"
    elif test:
        text += f"<br><span class='gcrepro-ci'>{html.escape(test)}</span>"
    return text


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


BODY_START, BODY_END = "<!-- gcrepro report -->", "<!-- /gcrepro report -->"
PAGE_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em} h1{font-size:1.5em}"
            " table{border-collapse:collapse} tr:nth-child(even){background:#f6f8fa}")
BODY_CSS = (".gcrepro-report{max-width:1240px} .gcrepro-report img{max-width:100%;height:auto}"
            " .gcrepro-report ul{font-size:0.9em;padding-left:1.2em;margin-top:0.6em}"
            " .gcrepro-ci{font-size:0.85em;color:#555} .gcrepro-ns{font-size:0.85em;color:#9a6700}")


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
    "row", "entry", "data", "paper_box_ap", "box_ap", "delta_box_ap", "paper_mask_ap", "mask_ap", "delta_mask_ap", "n",
    "paper_gc_gain_box_ap", "gc_gain_box_ap", "paper_gc_gain_mask_ap", "gc_gain_mask_ap", "train_s_per_iter", "inf_fps",
)


def gain_text(row: pd.Series, prefix: str, label: str) -> str:
    """Our GC gain as text: ``+1.2 toy [-0.3, +2.7] paired, not significant`` (or why there is no interval)."""
    value = row[f"gc_gain_{prefix}_ap"]
    if not _finite(value):
        return "—"
    text = f"{value:+.1f}" + (f" {label}" if label not in ("coco", "") else "")
    low, high, test = row[f"gc_gain_{prefix}_ci_low"], row[f"gc_gain_{prefix}_ci_high"], row[f"gc_gain_{prefix}_test"]
    if _finite(low):
        verdict = "" if row[f"gc_gain_{prefix}_significant"] else ", not significant"
        return f"{text} [{low:+.1f}, {high:+.1f}] {test.split(',')[0]}{verdict}"
    return f"{text} ({test})" if test else text


def to_markdown(frame: pd.DataFrame) -> str:
    """The main columns as a Markdown table (for a README), non-COCO values marked, ours as mean ± std with n and
    the GC gain with its 95% interval, the caption below."""
    def cell(col: str, r: pd.Series) -> str:
        value, label = r[col], r["data"]
        if col in ("gc_gain_box_ap", "gc_gain_mask_ap"):
            return gain_text(r, col.split("_")[2], label)
        if col in ("box_ap", "mask_ap"):
            return ap_text(value, r[f"{col}_std"], f" {label}" if label not in ("coco", "") else "")
        if isinstance(value, float) and math.isnan(value):
            return "—"
        if col in ("row", "n"):
            return str(int(value))
        if isinstance(value, float):
            return f"{value:.3f}" if col == "train_s_per_iter" else f"{value:.1f}"
        return str(value)

    header = [" ".join(x for x in COLUMNS[c] if x) for c in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, r) for c in MARKDOWN_COLUMNS) + " |")
    return "\n".join(lines) + "\n\n" + caption(frame) + "\n"
