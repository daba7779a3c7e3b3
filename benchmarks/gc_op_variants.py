"""Run benchmarks/gc_op.py once per CPU environment and print one table of speedups side by side.

    python benchmarks/gc_op_variants.py                 # CPU, fp32, 1 thread
    python benchmarks/gc_op_variants.py --threads 2

Each variant is a separate process (the kernels read their switches once): the default; the
fused op without its output pool (GCREPRO_CPU_POOL_MB=0) and without streaming stores
(GCREPRO_CPU_STREAM=never), to show what each is worth; torch's own allocations huge-page backed
too (THP_MEM_ALLOC_ENABLE=1); the SSE2 build of the kernels (GCREPRO_CPU_ISA=baseline). Writes
the per-variant JSON beside benchmarks/gc_op.json (gc_op.<variant>.json) and a markdown table to
stdout, ready for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "default": {},
    "no pool": {"GCREPRO_CPU_POOL_MB": "0"},
    "no streaming": {"GCREPRO_CPU_STREAM": "never"},
    "THP for both": {"THP_MEM_ALLOC_ENABLE": "1"},
    "baseline ISA": {"GCREPRO_CPU_ISA": "baseline"},
}
SWITCHES = {key for env in VARIANTS.values() for key in env}  # cleared, then set per variant


def run_variant(name: str, extra_env: dict[str, str], threads: int, repeat: int) -> dict:
    out = HERE / f"gc_op.{name.replace(' ', '_')}.json"
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES} | extra_env
    cmd = [sys.executable, str(HERE / "gc_op.py"), "--threads", str(threads), "--repeat", str(repeat), "--json", str(out)]
    print(f"[{name}] {' '.join(f'{k}={v}' for k, v in extra_env.items())} {' '.join(cmd[1:])}", file=sys.stderr)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def markdown(results: dict[str, dict]) -> str:
    names = list(results)
    first = results[names[0]]
    head = ["shape", "case", "mode", "ref ms", "fused ms", "speedup", "fused / floor"] + [f"speedup, {n}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, row in enumerate(first["rows"]):
        shape = "x".join(map(str, row["shape"]))
        cells = [shape, row["op"], row["mode"], f"{row['reference_ms']:.1f}", f"{row['fused_ms']:.1f}",
                 f"{row['speedup']:.2f}x", f"{row['fused_over_floor']:.2f}x"]
        cells += [f"{results[n]['rows'][k]['speedup']:.2f}x" for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    bw = ", ".join(f"{n} {r['copy_bandwidth_gb_s']:.1f}" for n, r in results.items())
    lines.append("")
    lines.append(f"copy bandwidth (GB/s): {bw}; {first['device']}, torch {first['torch']}, {first['date']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="which environments to run (default: all)")
    args = parser.parse_args(argv)
    results = {name: run_variant(name, VARIANTS[name], args.threads, args.repeat) for name in args.variants}
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
