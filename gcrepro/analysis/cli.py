"""``gcrepro table run``, ``gcrepro table report`` and ``gcrepro demo``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcrepro.cli import add_debug_flag, add_progress_option


def register(sub: argparse._SubParsersAction, table_sub: argparse._SubParsersAction) -> None:
    run = table_sub.add_parser(
        "run", help="train, evaluate and draw attention for table entries (papermill notebooks), then report",
        description="For each entry execute notebooks/train, evaluate and attention with papermill into "
        "RUNS_DIR/<entry>/ (params.yaml, executed notebooks, metrics.json, checkpoints, attention/, status.json), "
        "then write RUNS_DIR/report.html and report.csv. Every parameter is checked against the notebooks' "
        "declarations before anything runs. Completed entries are skipped unless --force.",
    )
    run.add_argument("--entries", default=None, help="comma-separated entry names, or 'all' (see `gcrepro table list`)")
    run.add_argument("--rows", default=None, help="table rows, e.g. 1-3,7")
    run.add_argument("--data", default=None, help="dataset root in the COCO 2017 layout (default: the built-in toy dataset)")
    run.add_argument("--runs-dir", type=Path, default=None, help="where the run folders go (default: $GCREPRO_RUNS, else runs/)")
    run.add_argument("--profile", choices=("toy", "paper"), default="toy", help="toy (CPU-sized) or paper recipe (default toy)")
    run.add_argument("--gpus", type=int, default=0, help="GPUs per entry; 0 = CPU (default 0)")
    run.add_argument("--force", action="store_true", help="re-run entries that completed before")
    run.add_argument("--jobs", type=int, default=1,
                     help="entries run at once (default 1; on a CPU the toy profile uses one thread per entry)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="a notebook parameter (NAME, or NOTEBOOK.NAME) or a training override "
                     "(overrides.KEY, e.g. overrides.max_iters=50); repeatable")
    run.add_argument("--seeds", default=None, metavar="LIST",
                     help="run each entry once per seed, in RUNS_DIR/<entry>/seed<k>/ (the run option seed=k): "
                     "0,1,2 or 0-2 or 0-2,5; the report shows mean ± std, n and the GC gain's 95%% interval "
                     "(default: one run per entry in RUNS_DIR/<entry>/, seed overrides.seed, else 0)")
    run.add_argument("--checkpoints", type=Path, default=None, metavar="DIR",
                     help="evaluate released checkpoints instead of training: every selected entry whose checkpoint "
                     "is in DIR (mmdetection's released file names, or inferred from the weights); --data defaults "
                     "to data/coco")
    add_progress_option(run)
    add_debug_flag(run)
    run.set_defaults(func=_cmd_run)

    report = table_sub.add_parser("report", help="write RUNS_DIR/report.html and report.csv from the runs there")
    report.add_argument("--runs-dir", type=Path, default=None,
                        help="folder with one run folder per entry (default: $GCREPRO_RUNS, else runs/; when it holds "
                        "no entry folders itself, its newest table folder such as runs/demo)")
    report.add_argument("--markdown", action="store_true", help="also print the main columns as a Markdown table")
    report.set_defaults(func=_cmd_report)

    demo = sub.add_parser(
        "demo", help="the toy table for R50 rows 1-3 (baseline, GC r16, GC r4): train, evaluate, heatmaps, report",
        description="Run the toy table for rows 1-3 on the built-in toy dataset (CPU) and print where the "
        "report and the attention figures are. Re-running skips completed entries unless --force.",
    )
    demo.add_argument("--runs-dir", type=Path, default=None, help="where the run folders go (default: $GCREPRO_RUNS/demo, else runs/demo)")
    demo.add_argument("--force", action="store_true", help="re-run entries that completed before")
    demo.add_argument("--jobs", type=int, default=3, help="entries trained at once (default 3: one thread each)")
    demo.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                      help="as for `gcrepro table run`, e.g. overrides.max_iters=50 for a quicker look; repeatable")
    add_progress_option(demo)
    add_debug_flag(demo)
    demo.set_defaults(func=_cmd_demo)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from gcrepro.analysis import table_runner
    from gcrepro.analysis.notebook_params import ParameterError, parse_set_args
    from gcrepro.cli import run_command
    from gcrepro.paths import default_runs_dir
    from gcrepro.progress import ProgressModeError, option

    try:
        entries = table_runner.select_entries(args.entries, args.rows)
        sets = parse_set_args(args.sets)
        progress = option(args.progress)
    except (ParameterError, ProgressModeError) as exc:
        return _fail("gcrepro table run", str(exc))
    runs_dir = (args.runs_dir or default_runs_dir()).expanduser().resolve()
    return run_command(
        "gcrepro table run", lambda: table_runner.table_run(
            entries, runs_dir=runs_dir, data=args.data, profile=args.profile, gpus=args.gpus, sets=sets,
            force=args.force, jobs=args.jobs, prog="gcrepro table run", checkpoints=args.checkpoints,
            seeds=args.seeds, progress=progress),
        debug=args.debug, folder=runs_dir)


def _cmd_report(args: argparse.Namespace) -> int:
    from gcrepro.analysis.report import ap_text, gain_text, write_report
    from gcrepro.analysis.runs_dir import report_folder

    try:
        runs_dir, note = report_folder(args.runs_dir)  # the runs folder, or its table folder (runs/demo)
        if note:
            print(note)
        frame, csv_path, html_path = write_report(runs_dir)
    except (FileNotFoundError, ValueError) as exc:
        return _fail("gcrepro table report", str(exc))
    shown = frame[["row", "entry", "data", "state", "n", "paper_box_ap", "box_ap", "paper_mask_ap", "mask_ap"]].copy()
    for column in ("box_ap", "mask_ap"):  # ours: mean ± std over the n seed runs
        shown[column] = [ap_text(r[column], r[f"{column}_std"], "") for _, r in frame.iterrows()]
    shown["gc_gain_box_ap"] = [gain_text(r, "box", "") for _, r in frame.iterrows()]
    shown = shown.rename(columns={"paper_box_ap": "paper box AP", "box_ap": "ours box AP", "paper_mask_ap": "paper mask AP",
                                  "mask_ap": "ours mask AP", "gc_gain_box_ap": "ours GC gain box AP (95% CI)"})
    print(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.1f}"))
    others = sorted(set(frame["data"]) - {"coco", ""})
    if others:
        print(f"(rows with data {', '.join(others)}: not COCO val2017 numbers of the paper's profile; no Δ to the paper)")
    if args.markdown:
        from gcrepro.analysis.report import to_markdown

        print("\n" + to_markdown(frame))
    print(f"report: {html_path}\n        {csv_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gcrepro.analysis.demo import default_demo_dir, run_demo
    from gcrepro.analysis.notebook_params import ParameterError, parse_set_args
    from gcrepro.cli import run_command
    from gcrepro.progress import ProgressModeError, option

    try:
        sets = parse_set_args(args.sets)
        progress = option(args.progress)
    except (ParameterError, ProgressModeError) as exc:
        return _fail("gcrepro demo", str(exc))
    runs_dir = Path(args.runs_dir or default_demo_dir()).expanduser().resolve()
    return run_command("gcrepro demo", lambda: run_demo(runs_dir=runs_dir, force=args.force, sets=sets, jobs=args.jobs,
                                                        progress=progress),
                       debug=args.debug, folder=runs_dir)
