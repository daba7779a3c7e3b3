"""``gcrepro table run``, ``gcrepro table report`` and ``gcrepro demo``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    run.add_argument("--runs-dir", type=Path, default=None, help="where the run folders go (default: runs/)")
    run.add_argument("--profile", choices=("toy", "paper"), default="toy", help="toy (CPU-sized) or paper recipe (default toy)")
    run.add_argument("--gpus", type=int, default=0, help="GPUs per entry; 0 = CPU (default 0)")
    run.add_argument("--force", action="store_true", help="re-run entries that completed before")
    run.add_argument("--jobs", type=int, default=1,
                     help="entries run at once (default 1; on a CPU the toy profile uses one thread per entry)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="a notebook parameter (NAME, or NOTEBOOK.NAME) or a training override "
                     "(overrides.KEY, e.g. overrides.max_iters=50); repeatable")
    run.set_defaults(func=_cmd_run)

    report = table_sub.add_parser("report", help="write RUNS_DIR/report.html and report.csv from the runs there")
    report.add_argument("--runs-dir", type=Path, default=None, help="folder with one run folder per entry (default: runs/)")
    report.add_argument("--markdown", action="store_true", help="also print the main columns as a Markdown table")
    report.set_defaults(func=_cmd_report)

    demo = sub.add_parser(
        "demo", help="the toy table for R50 rows 1-3 (baseline, GC r16, GC r4): train, evaluate, heatmaps, report",
        description="Run the toy table for rows 1-3 on the built-in toy dataset (CPU) and print where the "
        "report and the attention figures are. Re-running skips completed entries unless --force.",
    )
    demo.add_argument("--runs-dir", type=Path, default=None, help="where the run folders go (default: runs/demo)")
    demo.add_argument("--force", action="store_true", help="re-run entries that completed before")
    demo.add_argument("--jobs", type=int, default=3, help="entries trained at once (default 3: one thread each)")
    demo.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                      help="as for `gcrepro table run`, e.g. overrides.max_iters=50 for a quicker look; repeatable")
    demo.set_defaults(func=_cmd_demo)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from gcrepro.analysis import table_runner
    from gcrepro.analysis.notebook_params import ParameterError, parse_set_args

    try:
        entries = table_runner.select_entries(args.entries, args.rows)
        sets = parse_set_args(args.sets)
    except ParameterError as exc:
        return _fail("gcrepro table run", str(exc))
    return table_run(entries, runs_dir=args.runs_dir, data=args.data, profile=args.profile, gpus=args.gpus,
                     sets=sets, force=args.force, jobs=args.jobs, prog="gcrepro table run")


def table_run(
    entries: list[str],
    *,
    runs_dir: Path | None = None,
    data: str | None = None,
    profile: str = "toy",
    gpus: int = 0,
    sets: list[tuple[str, str]] = (),
    force: bool = False,
    jobs: int = 1,
    prog: str = "gcrepro table run",
) -> int:
    """Validate everything, then run the entries and build the report. 0: all done; 1: something failed; 2: bad input."""
    from gcrepro.analysis import table_runner
    from gcrepro.analysis.notebook_params import ParameterError
    from gcrepro.paths import default_runs_dir

    runs_dir = Path(runs_dir or default_runs_dir()).expanduser().resolve()

    def plan(data_root: str):
        return table_runner.plan_table(entries, runs_dir=runs_dir, data=data_root, profile=profile, gpus=gpus,
                                       sets=list(sets))

    try:
        data_root = _check_data(data)
        plans = plan(data_root)
        table_runner.check_kernel()
    except (ParameterError, RuntimeError, FileNotFoundError) as exc:
        return _fail(prog, str(exc))
    if data is None:  # the built-in toy dataset: made (or reused) once, its path recorded in params.yaml
        from gcrepro.data import ensure_toy

        data_root = str(ensure_toy())
        plans = plan(data_root)
    print(f"data: {data_root}\nruns: {runs_dir}", flush=True)
    try:
        statuses = table_runner.run_table(plans, force=force, jobs=jobs)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the entry in progress is marked failed, a re-run resumes it", file=sys.stderr)
        return 130
    failed = [p.entry for p, s in zip(plans, statuses) if s is None or s["state"] != "done"]
    report_ok = True
    try:
        notebook = table_runner.run_report_notebook(runs_dir)
        print(f"report: {runs_dir / 'report.html'}\n        {runs_dir / 'report.csv'}\n        {notebook}")
    except Exception as exc:  # noqa: BLE001 - the runs are kept; say what broke
        report_ok = False
        print(f"report FAILED: {type(exc).__name__}: {exc} (see {runs_dir / 'report.ipynb'})")
    if failed:
        print(f"{len(failed)} of {len(plans)} entries failed: {', '.join(failed)} "
              "(each run folder keeps status.json and the failing notebook)")
    return 1 if failed or not report_ok else 0


def _check_data(data: str | None) -> str:
    """A given --data folder must be a dataset now (before anything runs); None stays "" (toy, made later)."""
    if data is None:
        return ""
    from gcrepro.analysis.notebook_params import ParameterError
    from gcrepro.data import DataError, resolve_data

    try:
        root, _kind = resolve_data(data)
    except DataError as exc:
        raise ParameterError(f"--data: {exc}") from None
    return str(root)


def _cmd_report(args: argparse.Namespace) -> int:
    from gcrepro.analysis.report import write_report
    from gcrepro.paths import default_runs_dir

    runs_dir = (args.runs_dir or default_runs_dir()).expanduser().resolve()
    try:
        frame, csv_path, html_path = write_report(runs_dir)
    except (FileNotFoundError, ValueError) as exc:
        return _fail("gcrepro table report", str(exc))
    shown = frame[["row", "entry", "data", "state", "paper_box_ap", "box_ap", "paper_mask_ap", "mask_ap"]].rename(
        columns={"paper_box_ap": "paper box AP", "box_ap": "ours box AP", "paper_mask_ap": "paper mask AP",
                 "mask_ap": "ours mask AP"})
    print(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.1f}"))
    if (frame["data"] == "toy").any():
        print("(rows with data 'toy': AP on the synthetic toy val split, not COCO numbers)")
    if args.markdown:
        from gcrepro.analysis.report import to_markdown

        print("\n" + to_markdown(frame))
    print(f"report: {html_path}\n        {csv_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gcrepro.analysis.demo import run_demo
    from gcrepro.analysis.notebook_params import ParameterError, parse_set_args

    try:
        sets = parse_set_args(args.sets)
    except ParameterError as exc:
        return _fail("gcrepro demo", str(exc))
    return run_demo(runs_dir=args.runs_dir, force=args.force, sets=sets, jobs=args.jobs)
