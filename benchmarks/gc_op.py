"""Benchmark the fused GC op against the PyTorch reference, with the memory floor of each case.

    python benchmarks/gc_op.py                       # CPU, fp32
    python benchmarks/gc_op.py --device cuda         # CUDA, bf16 (--dtype to change)

Shapes: the c3/c4/c5 feature maps of a 2 x 800 x 1216 batch (issue 5). For each shape it times,
forward ("fwd") and forward+backward ("fwd+bwd"), reference vs fused:
  context          gc_context alone (attention logits, softmax over HW, weighted sum)
  block            the GC r16 block as the model runs it (gcrepro.modeling.ContextBlock, impl
                   "reference" vs "fused"): context -> transform (1x1 conv C->C/16, LayerNorm,
                   ReLU, 1x1 conv) -> channel add; fused, one autograd node (gcrepro/ops/block.py)
  block+res+relu   ContextBlock.forward_residual: the block plus the bottleneck's residual add and
                   ReLU (fused in the add's epilogue)
Memory floor = bytes that must move / copy bandwidth, where the bandwidth is (read + write bytes) /
time of a large tensor copy measured in the same run. Bytes that must move, in passes over the
N*C*H*W tensor (one pass = one read or one write of it):
  context  fwd 1 (read x)        fwd+bwd 3  (+ read x, write grad_x)
  block    fwd 3 (context; add reads x, writes out)
           fwd+bwd 6  (+ read grad_out, read x, write grad_x: the add's gradient joins the context's)
  block+res+relu  fwd 4 (+ read residual)
           fwd+bwd 10 (+ ReLU mask: read grad, read out, write grad_in; context: read x and grad_in,
                    write grad_x)
On CPU the fused op's outputs of 1 MiB and more come from a pool of recycled, huge-page-backed
blocks (csrc/cpu/output_pool.h): after the first call they cost no page faults. torch's own
outputs come from glibc (a fresh, faulting mmap for the largest; huge pages only with
THP_MEM_ALLOC_ENABLE=1). GCREPRO_CPU_POOL_MB=0 in the environment shows the op without its pool.
Writes a table to stdout and JSON to benchmarks/gc_op.json (or --json).
Targets: CPU fused >= 2x faster than the reference; CUDA (H100) fused forward within 2x the floor
and >= 5x faster than the reference, forward+backward >= 3x faster.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from gcrepro import ops
from gcrepro.atomic import write_json_atomic
from gcrepro.modeling.context_block import ContextBlock

SHAPES = [(2, 512, 100, 152), (2, 1024, 50, 76), (2, 2048, 25, 38)]  # c3, c4, c5 of 2x800x1216
GC_RATIO = 1.0 / 16  # r16, the paper's main setting (SPEC §1)
FLOOR_PASSES = {
    ("context", "fwd"): 1, ("context", "fwd+bwd"): 3,
    ("block", "fwd"): 3, ("block", "fwd+bwd"): 6,
    ("block+res+relu", "fwd"): 4, ("block+res+relu", "fwd+bwd"): 10,
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, repeat: int, warmup: int) -> float:
    """Wall time of fn() in ms (CUDA: synchronised around each call): the median on CUDA; the
    minimum on CPU, where other processes on a shared machine only ever add time."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) if device.type == "cuda" else min(times)


def copy_bandwidth(device: torch.device, repeat: int) -> tuple[float, float]:
    """Bytes per second (read + write) of a large tensor copy: into an existing tensor (the floor's
    bandwidth), and into a new one (clone: includes the first touch of fresh memory, which on CPU
    means page faults for every output as large as c3; both implementations pay that)."""
    nbytes = (256 if device.type == "cuda" else 128) * 2**20
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, repeat=max(repeat, 5), warmup=2)
    ms_new = time_ms(lambda: src.clone(), device, repeat=max(repeat, 5), warmup=2)
    return 2 * nbytes / (ms / 1e3), 2 * nbytes / (ms_new / 1e3)


def make_block(channels: int, device, dtype) -> ContextBlock:
    """The paper's GC r16 block (gcrepro.modeling.ContextBlock) with every parameter non-zero (a fresh
    block's last conv is zero, which would leave part of the backward with nothing to do)."""
    block = ContextBlock(channels, GC_RATIO, impl="reference")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p[0].numel() ** 0.5))
    return block.to(device=device, dtype=dtype)


def make_case(op: str, impl: str, x, residual, block: ContextBlock):
    """One timed call. context: the gc_context op; block / block+res+relu: the ContextBlock module as
    the model runs it (forward / forward_residual), with impl switched between reference and fused."""
    def run():
        if op == "context":
            return ops.gc_context(x, block.conv_mask.weight, block.conv_mask.bias, impl=impl)  # [N, C, 1, 1]
        block.impl = impl
        if op == "block":
            return block(x)  # [N, C, H, W]
        return block.forward_residual(x, residual)  # [N, C, H, W]

    return run


def bench_shape(shape, device, dtype, layout, repeat, warmup, bandwidth):
    gen = torch.Generator(device="cpu").manual_seed(0)
    n, c, h, w = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    residual = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    block = make_block(c, device, dtype)
    grads = {
        "context": torch.randn(n, c, 1, 1, generator=gen).to(device=device, dtype=dtype),
        "full": torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt),
    }
    leaves = [x, residual, *block.parameters()]
    tensor_bytes = x.numel() * x.element_size()
    rows = []
    for op in ("context", "block", "block+res+relu"):
        for mode in ("fwd", "fwd+bwd"):
            times = {}
            for impl in ("reference", "fused"):
                run = make_case(op, impl, x, residual, block)
                if mode == "fwd":
                    def fn(run=run):
                        with torch.no_grad():
                            run()
                else:
                    grad = grads["context" if op == "context" else "full"]

                    def fn(run=run, grad=grad):
                        for t in leaves:
                            t.requires_grad_(True)
                            t.grad = None
                        run().backward(grad)
                times[impl] = time_ms(fn, device, repeat, warmup)
            for t in leaves:
                t.requires_grad_(False)
                t.grad = None
            floor_ms = FLOOR_PASSES[(op, mode)] * tensor_bytes / bandwidth * 1e3
            rows.append({
                "shape": list(shape), "op": op, "mode": mode,
                "reference_ms": times["reference"], "fused_ms": times["fused"],
                "speedup": times["reference"] / times["fused"],
                "floor_ms": floor_ms, "fused_over_floor": times["fused"] / floor_ms,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--layout", choices=["contiguous", "channels_last"], default="contiguous")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 7 cpu, 50 cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads); default: torch's. On a machine shared with "
                             "other jobs, 1 avoids thread-pool barriers waiting for a descheduled worker")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("gc_op.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
    warmup = 10 if device.type == "cuda" else 1

    bandwidth, bandwidth_new = copy_bandwidth(device, repeat)
    rows = []
    for shape in SHAPES:
        rows += bench_shape(shape, device, dtype, args.layout, repeat, warmup, bandwidth)

    stat = "median" if device.type == "cuda" else "min"
    isa = f"   CPU kernels {ops.cpu_isa()}" if device.type == "cpu" else ""
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "") == "1"
    pool = ops.cpu_output_pool() if device.type == "cpu" else None
    pool_note = "" if pool is None else "   output pool " + (f"{pool['cap_bytes'] >> 20} MiB" if pool["cap_bytes"] else "off")
    print(f"device: {device_name(device)}   torch {torch.__version__}   dtype {dtype}   layout {args.layout}"
          f"   {stat} of {repeat} runs{isa}{pool_note}" + ("   THP_MEM_ALLOC_ENABLE=1" if thp else ""))
    print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s into an existing tensor (the floor's), "
          f"{bandwidth_new / 1e9:.1f} GB/s into a new one (clone)")
    header = f"{'shape':<18} {'op':<15} {'mode':<8} {'ref ms':>9} {'fused ms':>9} {'speedup':>8} {'floor ms':>9} {'fused/floor':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{shape:<18} {r['op']:<15} {r['mode']:<8} {r['reference_ms']:9.3f} {r['fused_ms']:9.3f} "
              f"{r['speedup']:7.2f}x {r['floor_ms']:9.3f} {r['fused_over_floor']:10.2f}x")

    if device.type == "cpu":
        targets = {"fused >= 2x faster than reference (all rows)": all(r["speedup"] >= 2 for r in rows)}
    else:
        fwd = [r for r in rows if r["mode"] == "fwd"]
        bwd = [r for r in rows if r["mode"] == "fwd+bwd"]
        targets = {
            "fused fwd within 2x of the floor": all(r["fused_over_floor"] <= 2 for r in fwd),
            "fused fwd >= 5x faster than reference": all(r["speedup"] >= 5 for r in fwd),
            "fused fwd+bwd >= 3x faster than reference": all(r["speedup"] >= 3 for r in bwd),
        }
    for name, ok in targets.items():
        print(f"target: {name}: {'met' if ok else 'NOT met'}")

    result = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(dtype).removeprefix("torch."), "layout": args.layout, "repeat": repeat,
        "cpu_isa": ops.cpu_isa() if device.type == "cpu" else None, "thp_mem_alloc_enable": thp,
        "cpu_output_pool": pool,
        "statistic": "median" if device.type == "cuda" else "min",
        "copy_bandwidth_gb_s": bandwidth / 1e9, "clone_bandwidth_gb_s": bandwidth_new / 1e9, "rows": rows, "targets": targets,
    }
    write_json_atomic(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
