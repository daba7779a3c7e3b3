"""Toy-profile training throughput of table rows on this machine: s/iter and images/s.

    python benchmarks/toy_throughput.py [--rows 1 2 3] [--iters 60] [--threads 1]
                                        [--out benchmarks/toy_throughput.json]

Each row trains ``--iters`` iterations of the toy profile (the real engine: ``gcrepro.train`` with
its defaults, i.e. what ``make demo`` runs) on the toy set in a temporary folder; s/iter is the
engine's own measure (SPEC §5: mean wall time per iteration, data included, excluding the first
``timing_skip_iters`` = 5 iterations). Prints a table and writes JSON; the load average is
recorded because other processes on a shared machine change the numbers a lot.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from gcrepro.atomic import write_json_atomic
from gcrepro.run_metrics import read_metrics


def bench_row(row: int, *, iters: int, threads: int, work_dir: Path) -> dict:
    from gcrepro.engine.api import train
    from gcrepro.entries import get_entry

    overrides = [f"max_iters={iters}", f"log_interval={iters}", f"cpu_threads={threads}"]
    start = time.perf_counter()
    train(row, work_dir=work_dir, overrides=overrides)
    wall = time.perf_counter() - start
    metrics = read_metrics(work_dir)
    s_per_iter = metrics.train_s_per_iter
    batch = metrics.train["total_batch"]
    return {
        "row": row,
        "entry": get_entry(row).name,
        "iterations": metrics.iterations,
        "total_batch": batch,
        "s_per_iter": s_per_iter,
        "images_per_s": batch / s_per_iter,
        "wall_s_incl_setup": wall,
        "peak_rss_gb": metrics.mem_gb,
        "toy_epoch_iters": metrics.train["iters_per_epoch"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=60, help="iterations per row (the first 5 are not timed)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads (toy profile default: 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "toy_throughput.json")
    args = parser.parse_args(argv)

    from gcrepro.data import ensure_toy

    ensure_toy()
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="gcrepro-bench-") as tmp:
        for row in args.rows:
            results.append(bench_row(row, iters=args.iters, threads=args.threads, work_dir=Path(tmp) / f"row{row}"))
    load_after = os.getloadavg()

    print(f"\ntoy-profile training throughput ({args.iters} iterations per row, {args.threads} thread(s), "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    print(f"{'row':>3}  {'entry':<36} {'s/iter':>7} {'images/s':>9} {'epoch (iters)':>14} {'est. epoch s':>13}")
    for r in results:
        print(f"{r['row']:>3}  {r['entry']:<36} {r['s_per_iter']:>7.3f} {r['images_per_s']:>9.2f} "
              f"{r['toy_epoch_iters']:>14} {r['toy_epoch_iters'] * r['s_per_iter']:>13.0f}")
    record = {
        "benchmark": "toy_throughput",
        "iters": args.iters,
        "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": results,
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
