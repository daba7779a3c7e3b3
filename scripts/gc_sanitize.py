"""Every CUDA kernel of the fused GC op on small inputs, for compute-sanitizer (scripts/gpu_check.sh):

    compute-sanitizer --tool memcheck|racecheck|synccheck|initcheck --kernel-name kns=gcrepro \
        --error-exitcode 3 python3 scripts/gc_sanitize.py

Cases: both layouts x fp32 and bf16 x H*W in {1, 33, 143} x C in {3, 48}, batch 2 (the launch
plan then takes 1-8 positions per block and 1024 threads), plus one batch of 128 (32 positions,
256 threads). Each case runs gc_context, gc_context_backward (with grad_lse and grad_x_add),
gc_add with and without residual and ReLU, and gc_add_relu_backward. Small on purpose: under
racecheck every shared-memory access is tracked. Checks no numbers (the pytest suite does);
exits 0 when every kernel ran, and prints one line.
"""
from __future__ import annotations

import itertools
import sys

import torch

from gcrepro import ops


def run_case(n: int, c: int, hw: tuple[int, int], dtype: torch.dtype, layout: str) -> int:
    """Runs every kernel once on one input; returns how many op calls ran."""
    g = torch.Generator(device="cuda").manual_seed(n * 1000 + c)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def rand(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dt)

    x = rand(n, c, *hw).contiguous(memory_format=fmt)
    residual = rand(n, c, *hw).contiguous(memory_format=fmt)
    grad = rand(n, c, *hw).contiguous(memory_format=fmt)
    w, b = rand(1, c, 1, 1, dt=torch.float32), rand(1, dt=torch.float32)
    gcrepro = torch.ops.gcrepro
    context, lse = gcrepro.gc_context(x, w, b)
    gcrepro.gc_context_backward(rand(n, c, dt=torch.float32), rand(n, dt=torch.float32), x, w, b, context, lse, grad)
    gcrepro.gc_context_backward(rand(n, c, dt=torch.float32), None, x, w, None, context, lse)
    term = rand(n, c, dt=torch.float32)
    out = gcrepro.gc_add(x, term, residual, True)
    gcrepro.gc_add(x, term, None, False)
    gcrepro.gc_add_relu_backward(grad, out)
    return 6


def main() -> int:
    if not torch.cuda.is_available() or not ops.fused_available("cuda"):
        print("gc_sanitize.py: needs a CUDA device and the CUDA op built", file=sys.stderr)
        return 2
    calls = 0
    cases = itertools.product(("contiguous", "channels_last"), (torch.float32, torch.bfloat16),
                              ((1, 1), (3, 11), (11, 13)), (3, 48))
    for layout, dtype, hw, c in cases:
        calls += run_case(2, c, hw, dtype, layout)
    calls += run_case(128, 3, (11, 13), torch.float32, "contiguous")
    torch.cuda.synchronize()
    print(f"gc_sanitize.py: {calls} op calls ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
