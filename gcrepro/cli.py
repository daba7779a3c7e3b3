"""The ``gcrepro`` command line.

Each area adds its own subcommands through an explicit ``register(subparsers)``
function; this file only lists them.
"""
from __future__ import annotations

import argparse
import sys


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
