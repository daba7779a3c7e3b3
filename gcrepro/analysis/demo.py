"""``gcrepro demo`` (``make demo``): the toy table for R50 rows 1-3, end to end on a CPU.

Rows 1-3 are Mask R-CNN R50-FPN fixBN 1x: the baseline, GC r16 and GC r4. Each is trained and
evaluated on the built-in toy dataset with the toy profile, its GC attention is drawn, and the
report puts the toy numbers beside the paper's (labelled toy: they are not COCO numbers).
Everything lands in ``RUNS/demo`` (RUNS: ``$GCREPRO_RUNS``, else ``runs/``), where the notebooks and
``make lab`` find it.
"""
from __future__ import annotations

import time
from pathlib import Path

DEMO_ROWS = "1-3"  # baseline, GC r16, GC r4 (R50-FPN, fixBN, 2fc, 1x)


def default_demo_dir() -> Path:
    """``RUNS/demo``: ``$GCREPRO_RUNS/demo``, else ``runs/demo``."""
    from gcrepro.paths import default_runs_dir

    return default_runs_dir() / "demo"


def run_demo(*, runs_dir: Path | None = None, force: bool = False, sets: list[tuple[str, str]] = (),
             jobs: int = 3, progress: str | None = None) -> int:
    """Run the demo table; print where the report and the figures are. Returns the exit code (130 after Ctrl-C:
    the running entries are stopped and marked interrupted; running it again resumes them). ``progress``: a mode of
    :mod:`gcrepro.progress` (None: ``$GCREPRO_PROGRESS``, else auto)."""
    from gcrepro import entries as table
    from gcrepro.analysis.table_runner import table_run

    runs_dir = Path(runs_dir or default_demo_dir()).expanduser().resolve()
    names = [e.name for e in table.select_entries(rows=DEMO_ROWS)]
    print(f"gcrepro demo: toy table for rows {DEMO_ROWS} ({', '.join(names)}) on the CPU", flush=True)
    start = time.perf_counter()
    # The three rows train at once: the toy profile computes on one thread (benchmarks/RESULTS.md).
    code = table_run(names, runs_dir=runs_dir, profile="toy", force=force, sets=list(sets), jobs=jobs,
                     prog="gcrepro demo", progress=progress)
    if code in (2, 130):
        return code
    figures = sorted(p for name in names for p in (runs_dir / name / "attention").glob("*.png"))
    print(f"\ngcrepro demo finished in {time.perf_counter() - start:.0f} s" + ("" if code == 0 else " WITH FAILURES"))
    print(f"  report (labelled toy: not COCO numbers): {runs_dir / 'report.html'}")
    print(f"                                       {runs_dir / 'report.csv'}")
    print(f"  box AP chart (ours beside the paper's):  {runs_dir / 'report_ap.png'}")
    if figures:
        print(f"  attention heatmaps ({len(figures)} PNGs): {figures[0].parent.parent.parent}/*/attention/")
        for p in figures:
            print(f"    {p}")
    print(f"  executed notebooks (signed: they open trusted): {runs_dir}/<entry>/{{train,evaluate,attention}}.ipynb, "
          f"{runs_dir}/report.ipynb")
    print("  to look at them in JupyterLab: `make lab` (the notebooks find these runs; looking re-runs nothing)")
    return code
