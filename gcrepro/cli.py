"""The ``gcrepro`` command line.

Each area adds its own subcommands through an explicit ``register(subparsers)``
function; this file lists them and says how a command ends on an error (:func:`run_command`):

- bad input (an unknown entry or key, missing data, a bad checkpoint, a run folder that is a file, not
  writable, full or in use, ``--resume`` with nothing to resume): one line on stderr, exit code 2;
- a run that failed (a NaN loss, a failed worker): one line, exit code 1;
- anything else: one line pointing to the traceback, appended to the run's log.txt, exit code 1;
  ``--debug`` raises every error with its traceback instead;
- Ctrl-C: one line, exit code 130 (a training's state says "interrupted", its last checkpoint is intact).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from gcrepro import entries
    from gcrepro.analysis import cli as analysis_cli
    from gcrepro.convert import cli as convert_cli
    from gcrepro.data import cli as data_cli
    from gcrepro.engine import cli as engine_cli

    parser = argparse.ArgumentParser(
        prog="gcrepro",
        description="Reproduce the GCNet table (global context blocks in Mask R-CNN / Cascade Mask R-CNN).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="the paper's table: list entries, run them, report")
    table_sub = table.add_subparsers(dest="table_command", required=True)
    entries.register_cli(table_sub)  # gcrepro table list
    data_cli.register(sub)  # gcrepro data toy
    engine_cli.register(sub)  # gcrepro train / eval
    analysis_cli.register(sub, table_sub)  # gcrepro table run / report, gcrepro demo
    convert_cli.register(sub)  # gcrepro convert
    return parser


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", default=None, metavar="MODE",
                        help="auto (default: a bar on a terminal, lines in a log file or pipe) | bar | lines "
                        "(one line every N iterations) | none; also $GCREPRO_PROGRESS")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="raise errors with their traceback here (default: one line; the traceback of an "
                        "unexpected error goes to the run's log.txt)")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors of bad input: their message is one line, printable as is."""
    from gcrepro.convert.errors import ConvertError
    from gcrepro.data.errors import DataError
    from gcrepro.engine.checkpoint import CheckpointError
    from gcrepro.engine.config import ConfigError
    from gcrepro.entries import EntryNotFound
    from gcrepro.progress import ProgressModeError
    from gcrepro.run_dir import RunDirError
    from gcrepro.run_lock import RunDirInUse
    from gcrepro.run_metrics import MetricsError

    return (ConfigError, ConvertError, DataError, EntryNotFound, MetricsError, CheckpointError, ProgressModeError,
            RunDirError, RunDirInUse, FileExistsError, FileNotFoundError)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def run_command(prog: str, body: Callable[[], int], *, debug: bool, folder: Path | None,
                run_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``body()``'s exit code; an error ends as the module docstring says. ``folder``: the run folder (its
    log.txt receives an unexpected error's traceback; OS errors of writes in it become one line)."""
    from gcrepro import ctrl_c
    from gcrepro.engine.logs import append_traceback
    from gcrepro.run_dir import as_run_dir_error

    try:
        with ctrl_c.watch():
            return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as err:
        if ctrl_c.received():  # an error the Ctrl-C caused (a loader worker that died of it first): still interrupted
            if folder is not None:
                append_traceback(folder, err, command=f"{prog} (after Ctrl-C)")
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
            return 130
        if debug:
            raise
        if isinstance(err, user_errors()):
            return fail(prog, first_line(err), 2)
        if isinstance(err, run_errors):
            return fail(prog, first_line(err), 1)
        translated = as_run_dir_error(err, folder) if folder is not None else None
        if translated is not None:
            return fail(prog, str(translated), 2)
        log = append_traceback(folder, err, command=prog) if folder is not None else None
        where = f"traceback in {log}; --debug prints it here" if log is not None else "--debug prints the traceback"
        return fail(prog, f"{type(err).__name__}: {first_line(err)} ({where})", 1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
