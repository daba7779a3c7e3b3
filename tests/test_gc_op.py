"""The compiled GC ops (csrc/, gcrepro.ops) against the PyTorch reference (gcrepro.ops.reference).

CI builds the op, so a missing build FAILS these tests (test_extension_is_built and every parity
test); set GCREPRO_NO_EXT=1 to run the suite deliberately without it (the fused tests then skip).
GPU tests carry @pytest.mark.gpu and skip without a CUDA device.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from gcrepro import ops
from gcrepro.ops import _extension
from gcrepro.ops.reference import channel_add_reference, gc_context_reference

from child_process import run_python  # tests/child_process.py

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
needs_op = pytest.mark.skipif(NO_EXT, reason="GCREPRO_NO_EXT=1: the compiled op is deliberately not used")
HAS_CUDA = torch.cuda.is_available()


def gpu_test(fn):
    """@pytest.mark.gpu; skips without a CUDA device (and with GCREPRO_NO_EXT=1)."""
    return needs_op(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")(pytest.mark.gpu(fn)))


# Tolerances against an fp64 reference computed from the same (rounded) inputs, relative to the
# largest reference value: fp32 accumulates in fp32; fp16/bf16 accumulate in fp32 and round the
# output once (half an ulp: 2**-11 for fp16, 2**-8 for bf16), plus the inputs of the backward
# (context, grads) that are themselves rounded.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":  # a slice: dense in neither layout (the op copies it)
        out = torch.cat([x, x], dim=3)[..., : x.shape[3]]
        assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
        return out
    return x.contiguous()


def _inputs(shape, dtype, device, layout, seed, logit_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    mask_w = torch.randn(1, c, 1, 1, generator=g, dtype=torch.float64) * logit_scale / c**0.5
    mask_b = torch.randn(1, generator=g, dtype=torch.float64)
    term = torch.randn(n, c, 1, 1, generator=g, dtype=torch.float64)
    residual = torch.randn(shape, generator=g, dtype=torch.float64)
    to = dict(dtype=dtype, device=device)
    return (_layout(x.to(**to), layout), mask_w.to(**to), mask_b.to(**to), term.to(**to),
            _layout(residual.to(**to), layout))


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    expected = expected.double().cpu()
    scale = max(expected.abs().max().item(), 1e-6)
    err = (actual.double().cpu() - expected).abs().max().item()
    assert err <= TOL[dtype] * scale, f"{what}: max abs error {err:.3g} > {TOL[dtype]} * {scale:.3g} ({dtype})"


def _block_grads(fn_context, fn_add, x, w, b, term, residual, relu):
    """Forward + backward of context -> add; returns outputs and grads of (x, w, term, residual)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b, term, residual)]
    lx, lw, lb, lt, lr = leaves
    context = fn_context(lx, lw, lb)  # [N, C, 1, 1]
    out = fn_add(lx, lt + context, lr, relu)  # [N, C, H, W]
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)
    out.backward(grad)
    return context, out, [lx.grad, lw.grad, lt.grad, lr.grad]


def _check_block(shape, dtype, device, layout, seed=0, logit_scale=1.0):
    # ReLU only in fp64: in lower precision, values near 0 round to the other side of the kink and
    # flip the mask, a legitimate difference (the ReLU backward is checked exactly in test_relu_*).
    relu = dtype == torch.float64
    x, w, b, term, residual = _inputs(shape, dtype, device, layout, seed, logit_scale)
    fused = _block_grads(
        lambda *a: ops.gc_context(*a, impl="fused"),
        lambda x_, t_, r_, relu_: ops.channel_add(x_, t_, r_, relu_, impl="fused"),
        x, w, b, term, residual, relu,
    )
    as64 = [t.detach().double().cpu() for t in (x, w, b, term, residual)]
    ref = _block_grads(gc_context_reference, channel_add_reference, *as64, relu)
    _close(fused[0], ref[0], dtype, "context")
    _close(fused[1], ref[1], dtype, "out")
    for name, got, want in zip(("grad_x", "grad_w", "grad_term", "grad_residual"), fused[2], ref[2]):
        _close(got, want, dtype, name)
    if layout == "channels_last" and shape[2] * shape[3] > 1 and shape[1] > 1:
        assert fused[1].is_contiguous(memory_format=torch.channels_last), "out lost channels_last"
        assert fused[2][0].is_contiguous(memory_format=torch.channels_last), "grad_x lost channels_last"


# ----------------------------------------------------------------------------------------- build


def test_extension_is_built():
    """CI builds the op: a missing build fails here instead of turning into skips."""
    if NO_EXT:
        assert not ops.fused_available("cpu")
        pytest.skip("GCREPRO_NO_EXT=1: the compiled op is deliberately not used")
    assert _extension.STATE.cpu, f"{_extension.STATE.cpu_reason}; build: {_extension.BUILD_COMMAND}"
    assert ops.fused_available("cpu")
    for name in ("gc_context", "gc_context_backward", "gc_add", "gc_add_relu_backward"):
        assert hasattr(torch.ops.gcrepro, name)


def test_missing_build_errors_and_auto_falls_back(monkeypatch):
    missing = _extension.ExtensionState(False, False, "gcrepro._C is not built (test)", "not built (test)")
    monkeypatch.setattr(_extension, "STATE", missing)
    x, w, b, term, _ = _inputs((2, 4, 3, 3), torch.float32, "cpu", "contiguous", 0)
    assert not ops.fused_available("cpu")
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        ops.gc_context(x, w, b, impl="fused")
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        ops.channel_add(x, term, impl="fused")
    torch.testing.assert_close(ops.gc_context(x, w, b, impl="auto"), gc_context_reference(x, w, b))
    with pytest.raises(ValueError, match="impl='fast'"):
        ops.gc_context(x, w, b, impl="fast")


@needs_op
def test_auto_uses_fused_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(ops, "_logged", set())
    x, w, b, term, _ = _inputs((2, 4, 3, 3), torch.float32, "cpu", "contiguous", 0)
    with caplog.at_level(logging.INFO, logger="gcrepro.ops"):
        for _ in range(3):
            ops.gc_context(x, w, b, impl="auto")
            ops.channel_add(x, term, impl="auto")
            ops.channel_add(x, term[:1], impl="auto")  # a term broadcast over N: the reference
    lines = [r.getMessage() for r in caplog.records]
    assert sum("gc_context on cpu runs the fused compiled op" in m for m in lines) == 1, lines
    assert sum("channel_add on cpu runs the fused compiled op" in m for m in lines) == 1, lines
    assert sum("channel_add on cpu runs the PyTorch reference" in m for m in lines) == 1, lines


# ------------------------------------------------------------------------------------- CPU parity


@needs_op
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 5, 4), (3, 5, 1, 1), (2, 3, 1, 7)])
def test_cpu_fp64_parity(shape, layout):
    _check_block(shape, torch.float64, "cpu", layout)


@needs_op
@pytest.mark.parametrize("relu,residual", [(False, False), (False, True), (True, False)])
def test_cpu_add_variants(relu, residual):
    x, w, b, term, res = _inputs((2, 6, 5, 5), torch.float64, "cpu", "channels_last", 3)
    res = res if residual else None
    got = ops.channel_add(x, term, res, relu, impl="fused")
    torch.testing.assert_close(got, channel_add_reference(x, term, res, relu), rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_low_precision_parity(dtype, layout):
    _check_block((2, 64, 13, 11), dtype, "cpu", layout)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_relu_backward_exact(dtype, layout):
    g = torch.Generator().manual_seed(0)
    out = _layout(torch.relu(torch.randn(2, 16, 9, 7, generator=g)).to(dtype), layout)
    grad = _layout(torch.randn(2, 16, 9, 7, generator=g).to(dtype), layout)
    grad_in, grad_t = torch.ops.gcrepro.gc_add_relu_backward(grad, out)
    torch.testing.assert_close(grad_in, torch.where(out > 0, grad, 0), rtol=0, atol=0)
    _close(grad_t, grad_in.double().sum((2, 3)), torch.float32 if dtype != torch.float64 else dtype, "grad_t")


@needs_op
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_large_hw_online_softmax(layout):
    # 96x80 positions: several chunks and several tasks per sample, merged by the online softmax;
    # sharp logits (scale 8) so the running max changes between chunks.
    _check_block((1, 16, 96, 80), torch.float64, "cpu", layout, logit_scale=8.0)
    _check_block((2, 24, 64, 50), torch.float32, "cpu", layout, logit_scale=8.0)


@needs_op
def test_cpu_peak_in_last_position():
    # The max logit sits in the very last position: the last chunk must rescale the others.
    x = torch.zeros(1, 4, 60, 60, dtype=torch.float64)
    x[0, :, -1, -1] = 1.0
    w = torch.full((1, 4, 1, 1), 20.0, dtype=torch.float64)
    for layout in ("contiguous", "channels_last"):
        xl = _layout(x, layout)
        torch.testing.assert_close(ops.gc_context(xl, w, None, impl="fused"), gc_context_reference(x, w, None))


@needs_op
def test_cpu_mixed_weight_dtype():
    # Under autocast x is fp16/bf16 while conv_mask's weight stays fp32: the op takes both.
    x, w, b, _, _ = _inputs((2, 32, 9, 9), torch.bfloat16, "cpu", "contiguous", 4)
    got = ops.gc_context(x, w.float(), b.float(), impl="fused")
    assert got.dtype == torch.bfloat16
    _close(got, gc_context_reference(x.double(), w.double(), b.double()), torch.bfloat16, "context")


@needs_op
def test_cpu_bias_gradient_is_zero():
    x, w, b, _, _ = _inputs((2, 8, 4, 4), torch.float64, "cpu", "contiguous", 5)
    b.requires_grad_(True)
    ops.gc_context(x, w, b, impl="fused").sum().backward()
    assert b.grad is not None and b.grad.abs().item() == 0.0


@needs_op
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_fp64(seed, layout):
    x, w, b, term, res = _inputs((2, 5, 3, 4), torch.float64, "cpu", layout, seed)
    args = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda *a: torch.ops.gcrepro.gc_context(*a), args)
    args = [t.detach().clone().requires_grad_(True) for t in (x, term, res)]
    assert torch.autograd.gradcheck(lambda x_, t_, r_: torch.ops.gcrepro.gc_add(x_, t_, r_, True), args)
    assert torch.autograd.gradcheck(lambda x_, t_: torch.ops.gcrepro.gc_add(x_, t_, None, False), args[:2])


@needs_op
def test_opcheck():
    x, w, b, term, res = _inputs((2, 6, 4, 5), torch.float64, "cpu", "contiguous", 0)
    xc = _layout(x, "channels_last")
    req = lambda *ts: [t.detach().clone().requires_grad_(True) for t in ts]  # noqa: E731
    cases = [
        (torch.ops.gcrepro.gc_context.default, (*req(x, w, b),)),
        (torch.ops.gcrepro.gc_context.default, (*req(xc, w), None)),
        (torch.ops.gcrepro.gc_add.default, (*req(x, term, res), True)),
        (torch.ops.gcrepro.gc_add.default, (*req(xc, term), None, False)),
    ]
    context, lse = torch.ops.gcrepro.gc_context(x, w, b)
    g = torch.randn_like(context, dtype=torch.float64)
    cases += [
        (torch.ops.gcrepro.gc_context_backward.default, (g, torch.randn_like(lse), x, w, b, context, lse)),
        (torch.ops.gcrepro.gc_context_backward.default, (g, None, xc, w, None, context, lse)),
        (torch.ops.gcrepro.gc_context_backward.default, (g, None, x, w, b, context, lse, torch.randn_like(x))),
        (torch.ops.gcrepro.gc_context_backward.default, (g, None, xc, w, b, context, lse, torch.randn_like(x))),
        (torch.ops.gcrepro.gc_add_relu_backward.default, (torch.randn_like(x), torch.relu(x))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@needs_op
def test_torch_compile_fullgraph_cpu():
    # aot_eager: dynamo + fake kernels + AOT autograd, without inductor's (slow) C++ code generation.
    x, w, b, term, res = _inputs((2, 8, 6, 5), torch.float32, "cpu", "channels_last", 0)

    def block(x, w, b, term, res):
        context = ops.gc_context(x, w, b, impl="fused")  # [N, C, 1, 1]
        return ops.channel_add(x, term + context, res, True, impl="fused")

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    eager_in = [t.detach().clone().requires_grad_(True) for t in (x, w, b, term, res)]
    comp_in = [t.detach().clone().requires_grad_(True) for t in (x, w, b, term, res)]
    eager_out, comp_out = block(*eager_in), compiled(*comp_in)
    torch.testing.assert_close(comp_out, eager_out)
    eager_out.square().sum().backward()
    comp_out.square().sum().backward()
    for e, c in zip(eager_in, comp_in):
        torch.testing.assert_close(c.grad, e.grad)


@needs_op
def test_bad_inputs_name_the_problem():
    x, w, b, term, _ = _inputs((2, 4, 3, 3), torch.float32, "cpu", "contiguous", 0)
    with pytest.raises(RuntimeError, match="w \\(conv_mask weight\\) must have 4 elements"):
        torch.ops.gcrepro.gc_context(x, w[:, :3], b)
    with pytest.raises(RuntimeError, match="x must be \\[N, C, H, W\\]"):
        torch.ops.gcrepro.gc_add(x[0], term, None, False)
    with pytest.raises(RuntimeError, match="residual must have x's shape"):
        torch.ops.gcrepro.gc_add(x, term, x[:1], False)


# ------------------------------------------------------------------------- CPU ISA variants, memory

def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


_ISA_SCRIPT = """
import json, sys, torch
from gcrepro import ops
torch.manual_seed(0)
out = {"isa": ops.cpu_isa(), "cases": []}
for layout in ("contiguous", "channels_last"):
    x = torch.randn(2, 24, 33, 17, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(1, 24, 1, 1, dtype=torch.float64) / 24 ** 0.5
    t = torch.randn(2, 24, 1, 1, dtype=torch.float64)
    r = torch.randn_like(x)
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [v.to(dtype).requires_grad_(True) for v in (x, w, t, r)]
        lx, lw, lt, lr = leaves
        y = ops.channel_add(lx, lt + ops.gc_context(lx, lw, None, impl="fused"), lr, relu=True, impl="fused")
        y.backward(torch.ones_like(y))
        out["cases"].append([v.double().flatten().tolist() for v in (y, lx.grad, lw.grad, lt.grad, lr.grad)])
json.dump(out, sys.stdout)
"""


def _run_isa_script(isa: str | None) -> dict:
    proc = run_python(_ISA_SCRIPT, env={"GCREPRO_CPU_ISA": isa})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@needs_op
def test_cpu_isa_is_picked_at_run_time_and_both_variants_agree():
    # The kernels are compiled for the baseline ISA and for AVX2+FMA+F16C (csrc/cpu/isa.h); the
    # CPU's flags decide, GCREPRO_CPU_ISA=baseline forces the baseline. Both must compute the same
    # block (forward and all gradients) up to fp32 summation order (bf16: one rounding).
    flags = _cpu_flags()
    by_cpu = "avx2" if {"avx2", "fma", "f16c"} <= flags else "baseline"  # what the CPU alone picks
    forced = os.environ.get("GCREPRO_CPU_ISA") == "baseline"
    assert ops.cpu_isa() == ("baseline" if forced else by_cpu), (ops.cpu_isa(), sorted(flags & {"avx2", "fma", "f16c"}))
    default = _run_isa_script(None)  # (the subprocess runs without GCREPRO_CPU_ISA)
    baseline = _run_isa_script("baseline")
    assert baseline["isa"] == "baseline"
    assert default["isa"] == by_cpu
    names = ("out", "grad_x", "grad_w", "grad_term", "grad_residual")
    for case, (got, want) in enumerate(zip(default["cases"], baseline["cases"])):
        dtype = torch.float32 if case % 2 == 0 else torch.bfloat16
        for name, a, b in zip(names, got, want):
            _close(torch.tensor(a), torch.tensor(b), dtype, f"case {case} {name}: {default['isa']} vs baseline")


@needs_op
def test_cpu_large_output_parity():
    # 32 MiB outputs: glibc's largest mmap threshold (csrc/cpu/output_pool.h), served by the pool.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 512, 256, generator=g)
    term = torch.randn(1, 64, 1, 1, generator=g)
    residual = torch.randn(x.shape, generator=g)
    assert x.numel() * 4 == 32 * 2**20
    torch.testing.assert_close(ops.channel_add(x, term, impl="fused"), x + term, rtol=0, atol=0)
    torch.testing.assert_close(
        ops.channel_add(x, term, residual, relu=True, impl="fused"), torch.relu(x + term + residual), rtol=1e-6, atol=1e-6
    )
    xg = x.clone().requires_grad_(True)
    w = (torch.randn(1, 64, 1, 1, generator=g) / 8).requires_grad_(True)
    ops.gc_context(xg, w, None, impl="fused").sum().backward()
    xr = x.clone().requires_grad_(True)
    wr = w.detach().clone().requires_grad_(True)
    gc_context_reference(xr, wr, None).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-6)


def _thp_mode() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


def _anon_huge_kb(begin: int, end: int) -> int:
    """AnonHugePages (kB) of the mappings that overlap [begin, end) (/proc/self/smaps; the madvise
    splits the tensor's mapping at its 2 MiB-aligned interior)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo < end and hi > begin
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total


@needs_op
@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason="transparent huge pages are off on this machine")
def test_cpu_large_output_is_backed_by_huge_pages():
    # New blocks of the output pool (csrc/cpu/output_pool.h) are advised huge pages: a fresh 62 MB
    # c3-sized output faults in 2 MiB at a time.
    x = torch.randn(2, 512, 100, 152)
    out = ops.channel_add(x, torch.randn(2, 512, 1, 1), impl="fused")
    huge_kb = _anon_huge_kb(out.data_ptr(), out.data_ptr() + out.nbytes)
    assert huge_kb >= 2048, f"no huge pages behind the output (THP mode {_thp_mode()})"


# ------------------------------------------------------------------------------------------- GPU


@gpu_test
def test_cuda_extension_is_built():
    assert ops.fused_available("cuda"), f"{_extension.STATE.cuda_reason}; build: {_extension.BUILD_COMMAND}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", [(2, 64, 13, 11), (1, 8, 1, 1), (2, 2048, 25, 38), (2, 48, 200, 152)])
@gpu_test
def test_cuda_parity(shape, layout, dtype):
    _check_block(shape, dtype, "cuda", layout, logit_scale=4.0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@gpu_test
def test_cuda_graph_capture(layout):
    x, w, b, term, res = _inputs((2, 256, 50, 76), torch.float16, "cuda", layout, 0)
    params = [t.detach().clone().requires_grad_(True) for t in (w, term)]

    def step():
        context = ops.gc_context(x, params[0], b, impl="fused")
        out = ops.channel_add(x, params[1] + context, res, True, impl="fused")
        out.float().square().mean().backward()
        return out

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up outside the graph
            for p in params:
                p.grad = None
            eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    eager_grads = [p.grad.clone() for p in params]
    graph = torch.cuda.CUDAGraph()
    for p in params:
        p.grad = None
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager)
    for p, e in zip(params, eager_grads):
        torch.testing.assert_close(p.grad, e)
