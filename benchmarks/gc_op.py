"""Benchmark the fused GC block against the PyTorch reference, at the toy and the paper's shapes.

    python benchmarks/gc_op.py                       # CPU, fp32, 1 thread, both shape sets
    python benchmarks/gc_op.py --device cuda         # CUDA, bf16 (--dtype to change)

Shapes, N = 2 (--shapes to pick):
  toy    the GC blocks' inputs in the toy profile (what users run on CPU): c3/c4/c5, C = 128/256/512
         at 24x28/12x14/6x7 (toy images padded to 192x224, backbone base width 16)
  paper  c3/c4/c5 of a 2 x 800 x 1216 batch, C = 512/1024/2048 at 100x152/50x76/25x38
For each shape it times forward ("fwd") and forward+backward ("fwd+bwd"), reference vs fused:
  block            the GC r16 block as gcrepro.modeling.ContextBlock runs it (impl "reference" vs
                   "fused"): context -> transform (1x1 conv C->C/16, LayerNorm, ReLU, 1x1 conv)
                   -> channel add; fused, one op (gcrepro.ops.gc_block)
  block+res+relu   ContextBlock(x, identity): the block plus the Bottleneck's residual add and ReLU
                   (fused into the add's epilogue), as the model runs it
A time is the best over --repeat samples of the mean of enough calls to fill ~20 ms (CPU; the
reference's and the fused op's samples alternate, so that both see the same load on a shared
machine) or the median of single calls (CUDA). Memory floor = bytes that must move / copy bandwidth, where the
bandwidth is (read + write bytes) / time of a large tensor copy measured in the same run. Bytes
that must move, in passes over the N*C*H*W tensor (one pass = one read or one write of it):
  block           fwd 3 (context reads x; add reads x, writes out)
                  fwd+bwd 6 (+ read grad_out, read x, write grad_x: the add's gradient joins the context's)
  block+res+relu  fwd 4 (+ read residual)
                  fwd+bwd 10 (+ ReLU mask: read grad, read out, write grad_in; context: read x and
                  grad_in, write grad_x)
At the toy shapes every tensor fits in cache: the floor says little there, the per-call overhead
much. On CUDA each row also records the context kernels' launch split for its shape
(cuda_context_plan: positions per block, blocks per sample, threads; csrc/cuda/launch_plan.h).
Writes a table to stdout and JSON to benchmarks/gc_op.json (or --json).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from gcrepro import ops
from gcrepro.atomic import write_json_atomic
from gcrepro.modeling.context_block import ContextBlock

SHAPE_SETS = {
    "toy": [(2, 128, 24, 28), (2, 256, 12, 14), (2, 512, 6, 7)],
    "paper": [(2, 512, 100, 152), (2, 1024, 50, 76), (2, 2048, 25, 38)],
}
CASES = ("block", "block+res+relu")
MODES = ("fwd", "fwd+bwd")
GC_RATIO = 1.0 / 16  # r16, the paper's main setting (SPEC §1)
FLOOR_PASSES = {
    ("block", "fwd"): 3, ("block", "fwd+bwd"): 6,
    ("block+res+relu", "fwd"): 4, ("block+res+relu", "fwd+bwd"): 10,
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAMPLE_S = 0.02  # CPU: calls per sample fill about this much time
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}  # --clock
clock = time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, repeat: int) -> float:
    """ms per call of fn(). CUDA: median of single synchronised calls. CPU: the minimum over
    `repeat` samples (other processes on a shared machine only ever add time) of the mean of
    enough calls to fill SAMPLE_S, so that sub-millisecond calls are timed over many."""
    fn()  # warm-up (first-call costs, allocator, logging)
    _sync(device)
    if device.type == "cuda":
        for _ in range(9):
            fn()
        times = []
        for _ in range(repeat):
            start = clock()
            fn()
            _sync(device)
            times.append((clock() - start) * 1e3)
        return statistics.median(times)
    start = clock()
    fn()
    number = max(1, int(SAMPLE_S / max(clock() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        for _ in range(number):
            fn()
        best = min(best, (clock() - start) * 1e3 / number)
    return best


def time_pair_ms(fns: dict, device: torch.device, repeat: int) -> dict:
    """{name: ms per call} for several callables; on the CPU their samples alternate (a load
    change on a shared machine then hits every one alike: their ratios are what can be trusted),
    each the mean of enough calls to fill SAMPLE_S, the best of `repeat` kept."""
    if device.type == "cuda":
        return {name: time_ms(fn, device, repeat) for name, fn in fns.items()}
    numbers = {}
    for name, fn in fns.items():
        fn()  # warm-up (first-call costs, allocator, logging)
        start = clock()
        fn()
        numbers[name] = max(1, int(SAMPLE_S / max(clock() - start, 1e-6)))
    best = dict.fromkeys(fns, float("inf"))
    for r in range(repeat):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            fn, number = fns[name], numbers[name]
            start = clock()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (clock() - start) * 1e3 / number)
    return best


def copy_bandwidth(device: torch.device, repeat: int) -> float:
    """Bytes per second (read + write) of a large tensor copy into an existing tensor."""
    nbytes = (256 if device.type == "cuda" else 128) * 2**20
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return 2 * nbytes / (time_ms(lambda: dst.copy_(src), device, max(repeat, 5)) / 1e3)


def make_block(channels: int, device, dtype) -> ContextBlock:
    """The paper's GC r16 block (gcrepro.modeling.ContextBlock) with every parameter non-zero (a fresh
    block's last conv is zero, which would leave part of the backward with nothing to do)."""
    block = ContextBlock(channels, GC_RATIO, impl="reference")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p[0].numel() ** 0.5))
    return block.to(device=device, dtype=dtype)


def run_block(block: ContextBlock, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """One call as the model makes it: block(x), or with the Bottleneck's residual relu(gc(x) + residual)."""
    return block(x) if residual is None else block(x, residual)


class ShapeCase:
    """The tensors and the block for one shape; `fn(case, mode, impl)` is one timed call."""

    def __init__(self, shape, device, dtype, layout: str) -> None:
        gen = torch.Generator(device="cpu").manual_seed(0)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.x, self.residual, self.grad = (
            torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt) for _ in range(3)
        )
        self.block = make_block(shape[1], device, dtype)
        self.leaves = [self.x, self.residual, *self.block.parameters()]

    def fn(self, case: str, mode: str, impl: str):
        """One call of `impl`; the callables of one (case, mode) may be interleaved (each sets its impl)."""
        block = self.block
        residual = self.residual if case == "block+res+relu" else None
        for t in self.leaves:
            t.requires_grad_(mode == "fwd+bwd")
            t.grad = None
        if mode == "fwd":
            def call():
                block.impl = impl
                with torch.no_grad():
                    run_block(block, self.x, residual)
        else:
            def call():
                block.impl = impl
                for t in self.leaves:
                    t.grad = None
                run_block(block, self.x, residual).backward(self.grad)
        return call


def bench(shape_sets, device, dtype, layout, repeat, bandwidth):
    rows = []
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0
    for set_name in shape_sets:
        for shape in SHAPE_SETS[set_name]:
            sc = ShapeCase(shape, device, dtype, layout)
            tensor_bytes = sc.x.numel() * sc.x.element_size()
            n, _, h, w = shape
            plan = torch.ops.gcrepro.cuda_context_plan(n, h * w, layout == "channels_last", sms)[:3] if sms else None
            for case in CASES:
                for mode in MODES:
                    times = time_pair_ms({impl: sc.fn(case, mode, impl) for impl in ("reference", "fused")}, device,
                                         repeat)
                    floor_ms = FLOOR_PASSES[(case, mode)] * tensor_bytes / bandwidth * 1e3
                    rows.append({
                        "shapes": set_name, "shape": list(shape), "op": case, "mode": mode,
                        "reference_ms": times["reference"], "fused_ms": times["fused"],
                        "speedup": times["reference"] / times["fused"],
                        "floor_ms": floor_ms, "fused_over_floor": times["fused"] / floor_ms,
                        "cuda_context_plan": plan,
                    })
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def print_table(rows) -> None:
    header = (f"{'shapes':<6} {'shape':<16} {'op':<15} {'mode':<8} {'ref ms':>9} {'fused ms':>9} {'speedup':>8} "
              f"{'floor ms':>9} {'fused/floor':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['shapes']:<6} {shape:<16} {r['op']:<15} {r['mode']:<8} {r['reference_ms']:9.3f} "
              f"{r['fused_ms']:9.3f} {r['speedup']:7.2f}x {r['floor_ms']:9.3f} {r['fused_over_floor']:10.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--layout", choices=["contiguous", "channels_last"], default="contiguous")
    parser.add_argument("--shapes", default="toy,paper", help="comma-separated shape sets: toy, paper")
    parser.add_argument("--repeat", type=int, default=None, help="timed samples per case (default 7 cpu, 50 cuda)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (torch.set_num_threads); default 1, as the toy profile runs")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="CPU: time by the wall clock (default) or by this thread's CPU time (on a shared, "
                             "oversubscribed machine the time spent descheduled is noise)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("gc_op.json"))
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock] if args.device == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    shape_sets = [s for s in args.shapes.split(",") if s]
    if unknown := set(shape_sets) - set(SHAPE_SETS):
        parser.error(f"--shapes: unknown {sorted(unknown)}; known: {sorted(SHAPE_SETS)}")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gc_op.py: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if not ops.fused_available(device):
        print(f"gc_op.py: the fused op is not built for {device.type}; "
              "run `pip install --no-build-isolation -e .` first", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    repeat = args.repeat or (50 if device.type == "cuda" else 7)

    bandwidth = copy_bandwidth(device, repeat)
    rows = bench(shape_sets, device, dtype, args.layout, repeat, bandwidth)

    stat = "median of single calls" if device.type == "cuda" else f"best of {repeat} samples, {args.clock} clock"
    isa = f"   CPU kernels {ops.cpu_isa()}" if device.type == "cpu" else ""
    print(f"device: {device_name(device)}   torch {torch.__version__}   dtype {dtype}   layout {args.layout}"
          f"   {stat}{isa}")
    print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s")
    print_table(rows)

    if device.type == "cpu":
        targets = {
            f"fused >= 2x faster than reference ({s} shapes)": all(r["speedup"] >= 2 for r in rows if r["shapes"] == s)
            for s in shape_sets
        }
    else:
        fwd = [r for r in rows if r["mode"] == "fwd" and r["shapes"] == "paper"]
        bwd = [r for r in rows if r["mode"] == "fwd+bwd" and r["shapes"] == "paper"]
        targets = {
            "fused fwd within 2x of the floor (paper shapes)": all(r["fused_over_floor"] <= 2 for r in fwd),
            "fused fwd >= 5x faster than reference (paper shapes)": all(r["speedup"] >= 5 for r in fwd),
            "fused fwd+bwd >= 3x faster than reference (paper shapes)": all(r["speedup"] >= 3 for r in bwd),
        }
    for name, ok in targets.items():
        print(f"target: {name}: {'met' if ok else 'NOT met'}")

    result = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(dtype).removeprefix("torch."), "layout": args.layout, "repeat": repeat,
        "threads": torch.get_num_threads(), "cpu_isa": ops.cpu_isa() if device.type == "cpu" else None,
        "statistic": stat, "clock": args.clock, "copy_bandwidth_gb_s": bandwidth / 1e9, "rows": rows, "targets": targets,
    }
    write_json_atomic(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
