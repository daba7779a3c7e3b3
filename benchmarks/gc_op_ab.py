"""Time the GC block under two builds or settings side by side: alternating samples, one table of ratios.

    python benchmarks/gc_op_ab.py --b-root /tmp/oldop                 # this checkout (A) vs another build (B)
    python benchmarks/gc_op_ab.py --b-env GCREPRO_CPU_ISA=baseline     # AVX2 vs baseline-ISA kernels

Each side is a worker process that imports gcrepro from its root (PYTHONPATH; the other checkout
built in place: `GCREPRO_CUDA=0 python setup.py build_ext --inplace` there) under its own
environment, on one compute thread, and times the cases of benchmarks/gc_op.py (both shape sets,
fp32, contiguous). The driver asks the two sides in turn for one timing sample of the same case,
--rounds times (the order flips every round), and keeps each side's best: on a shared, noisy
machine the ratio B/A of two alternated runs is what can be trusted, not the absolute times. The
reference rows run the same PyTorch code on both sides; their ratio shows the noise left.
Writes a table to stdout and JSON to benchmarks/gc_op_ab.json (or --json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPLS = ("reference", "fused")
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}  # as gc_op.py --clock


def worker(threads: int, clock_name: str) -> None:
    """Answer requests on stdin, one JSON line each: {"shape", "case", "mode", "impl"} -> {"ms"}."""
    import torch

    import gc_op  # benchmarks/gc_op.py (this script's folder); gcrepro comes from PYTHONPATH
    from gcrepro import ops

    clock = CLOCKS[clock_name]
    torch.set_num_threads(threads)
    if hasattr(gc_op.ContextBlock, "forward_residual"):  # a build from before ContextBlock(x, identity)
        gc_op.run_block = lambda block, x, r: block(x) if r is None else block.forward_residual(x, r)
    shape_cases: dict[tuple, gc_op.ShapeCase] = {}
    numbers: dict[tuple, int] = {}  # (shape, case, mode, impl) -> calls per sample
    print(json.dumps({"package": ops.__file__, "cpu_isa": ops.cpu_isa(), "threads": torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        shape = tuple(req["shape"])
        if shape not in shape_cases:
            shape_cases[shape] = gc_op.ShapeCase(shape, torch.device("cpu"), torch.float32, "contiguous")
        fn = shape_cases[shape].fn(req["case"], req["mode"], req["impl"])
        key = (shape, req["case"], req["mode"], req["impl"])
        if key not in numbers:
            fn()  # warm-up
            start = clock()
            fn()
            numbers[key] = max(1, int(gc_op.SAMPLE_S / max(clock() - start, 1e-6)))
        start = clock()
        for _ in range(numbers[key]):
            fn()
        print(json.dumps({"ms": (clock() - start) * 1e3 / numbers[key]}), flush=True)


class Side:
    def __init__(self, name: str, root: Path, env: dict[str, str], threads: int, clock: str) -> None:
        self.name = name
        child_env = os.environ | env | {"PYTHONPATH": str(root)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--clock", clock]
        self.proc = subprocess.Popen(cmd, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())
        self.info["env"] = env

    def sample(self, **req) -> float:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a-root", type=Path, default=HERE.parent, help="side A's checkout (default: this one)")
    parser.add_argument("--b-root", type=Path, default=HERE.parent, help="side B's checkout (default: this one)")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE", help="side A's extra environment")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE", help="side B's extra environment")
    parser.add_argument("--shapes", default="toy,paper", help="comma-separated shape sets of gc_op.py")
    parser.add_argument("--rounds", type=int, default=7, help="samples per side and case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock, or each worker thread's CPU time (oversubscribed machines)")
    parser.add_argument("--json", type=Path, default=HERE / "gc_op_ab.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from gc_op import CASES, MODES, SHAPE_SETS  # (no gcrepro import in the driver)

    sides = [Side(name, root.resolve(), dict(kv.split("=", 1) for kv in env), args.threads, args.clock)
             for name, root, env in (("A", args.a_root, args.a_env), ("B", args.b_root, args.b_env))]
    for side in sides:
        print(f"{side.name}: {side.info}")
    rows = []
    try:
        for set_name in args.shapes.split(","):
            for shape in SHAPE_SETS[set_name]:
                for case in CASES:
                    for mode in MODES:
                        row = {"shapes": set_name, "shape": list(shape), "op": case, "mode": mode}
                        for impl in IMPLS:
                            best = {s.name: float("inf") for s in sides}
                            for r in range(args.rounds):
                                for side in sides if r % 2 == 0 else sides[::-1]:
                                    ms = side.sample(shape=shape, case=case, mode=mode, impl=impl)
                                    best[side.name] = min(best[side.name], ms)
                            row |= {f"{impl}_a_ms": best["A"], f"{impl}_b_ms": best["B"],
                                    f"{impl}_b_over_a": best["B"] / best["A"]}
                        rows.append(row)
                        print_row(row, header=len(rows) == 1)
    finally:
        for side in sides:
            side.close()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "sides": {s.name: s.info for s in sides}, "rounds": args.rounds, "threads": args.threads,
              "clock": args.clock, "rows": rows}
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 0


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'shapes':<6} {'shape':<16} {'op':<15} {'mode':<8} | {'ref A':>8} {'ref B':>8} {'B/A':>6} | "
              f"{'fused A':>8} {'fused B':>8} {'B/A':>6}   (ms)")
    shape = "x".join(map(str, row["shape"]))
    cells = " | ".join(f"{row[f'{i}_a_ms']:8.3f} {row[f'{i}_b_ms']:8.3f} {row[f'{i}_b_over_a']:6.2f}" for i in IMPLS)
    print(f"{row['shapes']:<6} {shape:<16} {row['op']:<15} {row['mode']:<8} | {cells}", flush=True)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker(int(sys.argv[sys.argv.index("--threads") + 1]), sys.argv[sys.argv.index("--clock") + 1])
    else:
        sys.exit(main())
