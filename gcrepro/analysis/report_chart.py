"""The report's chart: box AP, ours beside the paper's, and the GC gain over each group's baseline.

Left: box AP per row, the paper's bar beside ours (ours hatched and marked with its label when it is not
a COCO number; the mean over n seed runs with ± 1 std error bars when n > 1). Right: the GC gain in box AP
for the GC rows, the paper's beside ours (ours only where a comparable baseline run exists, with its 95%
interval as error bars when there is one). The paper's bars are single published numbers. Made from the report's frame (:func:`gcrepro.analysis.report.report_frame`).
"""
from __future__ import annotations

import math

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PAPER, OURS = "#9aa5b1", "#2f6db5"
WIDTH = 0.38


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _tick(row: pd.Series) -> str:
    import gcrepro

    context = gcrepro.get_entry(int(row["row"])).context
    return f"{int(row['row'])}\n{'baseline' if context == 'none' else context}"


def _error(row: pd.Series, ours: str) -> tuple[float, float] | None:
    """Our bar's error bar (below, above): ± std for a mean over n > 1 runs, the 95% interval for a gain."""
    if f"{ours}_std" in row.index and _finite(row[f"{ours}_std"]) and row["n"] > 1:
        return row[f"{ours}_std"], row[f"{ours}_std"]
    low, high = row.get(ours.replace("_ap", "_ci_low")), row.get(ours.replace("_ap", "_ci_high"))
    if ours.startswith("gc_gain") and _finite(low) and _finite(high):
        return row[ours] - low, high - row[ours]
    return None


def _bars(ax: Axes, frame: pd.DataFrame, paper: str, ours: str, *, signed: bool) -> None:
    xs = list(range(len(frame)))
    for x, (_, r) in zip(xs, frame.iterrows()):
        label = r["data"] if r["data"] not in ("coco", "") else ""
        for dx, column, colour, hatch in ((-WIDTH / 2, paper, PAPER, ""), (WIDTH / 2, ours, OURS, "//" if label else "")):
            value = r[column]
            if not _finite(value):
                ax.text(x + dx, 0, "—", ha="center", va="bottom", fontsize=8, color="#555")
                continue
            error = _error(r, ours) if column == ours else None
            ax.bar(x + dx, value, WIDTH, color=colour, hatch=hatch, edgecolor="white" if hatch else colour,
                   yerr=None if error is None else [[error[0]], [error[1]]], capsize=3, ecolor="#222")
            text = f"{value:+.1f}" if signed else f"{value:.1f}"
            top = value + (error[1] if error and value >= 0 else -error[0] if error else 0.0)
            ax.annotate(text + (f" {label}" if label and column == ours else ""), (x + dx, top),
                        xytext=(0, 2 if value >= 0 else -2), textcoords="offset points", ha="center",
                        va="bottom" if value >= 0 else "top", fontsize=7.5)
    ax.set_xticks(xs, [_tick(r) for _, r in frame.iterrows()], fontsize=8)
    ax.set_xlim(-0.6, len(frame) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    if signed:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.margins(y=0.18)


def ap_chart(frame: pd.DataFrame) -> Figure | None:
    """The chart for the rows of ``frame`` that have our box AP; None when none has it yet."""
    ours = frame[frame["box_ap"].map(_finite) & frame["row"].map(_finite)].reset_index(drop=True)
    if ours.empty:
        return None
    gc = ours[ours["paper_gc_gain_box_ap"].map(_finite)].reset_index(drop=True)
    width = min(4.0 + 0.9 * (len(ours) + len(gc)), 12.4)
    fig = Figure(figsize=(width, 3.4), dpi=100, layout="constrained")
    ratios = [max(len(ours), 1), max(len(gc), 1)] if len(gc) else [1]
    axes = fig.subplots(1, len(ratios), squeeze=False, gridspec_kw={"width_ratios": ratios})[0]
    _bars(axes[0], ours, "paper_box_ap", "box_ap", signed=False)
    seeded = (ours["n"] > 1).any()
    axes[0].set_title("box AP (%) per row" + (" (ours: mean ± std over n seeds)" if seeded else ""), fontsize=9)
    if len(gc):
        _bars(axes[1], gc, "paper_gc_gain_box_ap", "gc_gain_box_ap", signed=True)
        has_ci = gc["gc_gain_box_ci_low"].map(_finite).any()
        axes[1].set_title("GC gain in box AP over the group's baseline" + (" (ours: 95% CI)" if has_ci else ""),
                          fontsize=9)
    others = sorted(set(ours["data"]) - {"coco", ""})
    handles = [Patch(color=PAPER, label="paper (COCO val2017)"),
               Patch(facecolor=OURS, hatch="//" if others else "", edgecolor="white",
                     label="ours" + (f" ({', '.join(others)}: not COCO numbers)" if others else ""))]
    fig.legend(handles=handles, loc="outside upper center", ncols=2, fontsize=8, frameon=False)
    return fig
