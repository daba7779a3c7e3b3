"""The compiled GC kernels (csrc/, torch.ops.gcrepro.*) against the PyTorch reference, and the one
place that chooses between them (gcrepro.ops.use_fused). The composed block op: test_gc_block_op.py.

CI builds the op, so a missing build FAILS these tests (test_extension_is_built and every parity
test); set GCREPRO_NO_EXT=1 to run the suite deliberately without it (the kernel tests then skip).
GPU tests carry @pytest.mark.gpu and skip without a CUDA device.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gcrepro import ops
from gcrepro.ops import _extension
from gcrepro.ops.reference import channel_add_reference, gc_context_reference

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
needs_op = pytest.mark.skipif(NO_EXT, reason="GCREPRO_NO_EXT=1: the compiled op is deliberately not used")
HAS_CUDA = torch.cuda.is_available()
gcrepro_ops = torch.ops.gcrepro


def gpu_test(fn):
    """@pytest.mark.gpu; skips without a CUDA device (and with GCREPRO_NO_EXT=1)."""
    return needs_op(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")(pytest.mark.gpu(fn)))


# Tolerances against an fp64 reference computed from the same (rounded) inputs, relative to the
# largest reference value: fp32 sums in fp32 (in an order that depends on the ISA and the thread
# count); fp16/bf16 sum in fp32 and round the output once (half an ulp: 2**-11 for fp16, 2**-8 for
# bf16), plus the inputs of the backward (context, grads) that are themselves rounded.
TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":  # a slice: dense in neither layout (the op copies it)
        out = torch.cat([x, x], dim=3)[..., : x.shape[3]]
        assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
        return out
    return x.contiguous()


def _inputs(shape, dtype, device, layout, seed, logit_scale=1.0):
    """x, conv_mask weight and bias, a channel term, a residual: random, rounded to dtype."""
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


def _reference_context(x, w, b):
    """(context [N, C], lse [N]) of the reference, differentiable."""
    logits = torch.nn.functional.conv2d(x, w, b).flatten(1)  # [N, HW]
    return gc_context_reference(x, w, b).flatten(1), torch.logsumexp(logits, dim=1)


def _check_kernels(shape, dtype, device, layout, seed=0, logit_scale=1.0):
    """Every kernel on these inputs against the fp64 reference (autograd of it for the backward)."""
    x, w, b, term, residual = _inputs(shape, dtype, device, layout, seed, logit_scale)
    g = torch.Generator().manual_seed(seed + 100)
    n, c = shape[:2]
    grad_context = torch.randn(n, c, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(n, generator=g, dtype=torch.float64)
    grad_x_add = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)  # x's dtype, contiguous
    x64, w64, b64 = (t.detach().double().cpu().requires_grad_(True) for t in (x, w, b))
    ref_context, ref_lse = _reference_context(x64, w64, b64)
    ((ref_context * grad_context).sum() + (ref_lse * grad_lse).sum()).backward()

    context, lse = gcrepro_ops.gc_context(x, w, b)
    _close(context, ref_context, dtype, "context")
    _close(lse, ref_lse, dtype, "lse")
    grad_x, grad_w = gcrepro_ops.gc_context_backward(
        grad_context.to(device), grad_lse.to(device), x, w, b, context, lse, grad_x_add.to(device))
    _close(grad_x, x64.grad + grad_x_add.double(), dtype, "grad_x (+ grad_x_add)")
    _close(grad_w, w64.grad, dtype, "grad_w")
    for res, relu in ((None, False), (residual, True)):
        out = gcrepro_ops.gc_add(x, term, res, relu)
        res64 = None if res is None else res.double().cpu()
        want = channel_add_reference(x.double().cpu(), term.double().cpu(), res64, relu)
        _close(out, want, dtype, f"gc_add (residual {res is not None}, relu {relu})")
    if layout == "channels_last" and shape[2] * shape[3] > 1 and shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last), "out lost channels_last"
        assert grad_x.is_contiguous(memory_format=torch.channels_last), "grad_x lost channels_last"


# ----------------------------------------------------------------------------------------- build


def test_extension_is_built():
    """CI builds the op: a missing build fails here instead of turning into skips."""
    if NO_EXT:
        assert not ops.fused_available("cpu")
        pytest.skip("GCREPRO_NO_EXT=1: the compiled op is deliberately not used")
    assert _extension.STATE.cpu, f"{_extension.STATE.cpu_reason}; build: {_extension.BUILD_COMMAND}"
    assert ops.fused_available("cpu")
    for name in ("gc_context", "gc_context_backward", "gc_add", "gc_add_relu_backward", "gc_block", "cpu_isa"):
        assert hasattr(torch.ops.gcrepro, name)
    assert ops.cpu_isa() in ("avx2", "baseline")


# --------------------------------------------------------------------------- choice of implementation


def test_missing_build_errors_and_auto_falls_back(monkeypatch):
    missing = _extension.ExtensionState(False, False, "gcrepro._C is not built (test)", "not built (test)")
    monkeypatch.setattr(_extension, "STATE", missing)
    x = torch.randn(2, 4, 3, 3)
    assert not ops.fused_available("cpu")
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        ops.use_fused("fused", x)
    assert ops.use_fused("auto", x) is False
    assert ops.use_fused("reference", x) is False
    with pytest.raises(ValueError, match="impl='fast'"):
        ops.use_fused("fast", x)


@needs_op
def test_auto_takes_what_the_kernels_take():
    x = torch.randn(2, 4, 3, 3)
    assert ops.use_fused("auto", x)
    assert ops.use_fused("auto", x.to(torch.bfloat16), torch.randn(2, 4, 3, 3, dtype=torch.bfloat16))
    assert ops.use_fused("auto", x.contiguous(memory_format=torch.channels_last))
    # inputs the kernels do not take, or that the reference serves as well: the reference
    # (every kind of input: tests/test_gc_op_edges.py)
    assert not ops.use_fused("auto", x[:0])  # an empty batch: nothing to compute
    assert not ops.use_fused("auto", x.to(torch.float8_e4m3fn))
    assert not ops.use_fused("auto", x[:, :, :0])
    assert not ops.use_fused("auto", x, torch.randn(2, 4, 3, 3, dtype=torch.float64))  # residual dtype
    assert not ops.use_fused("auto", x, paper_block=False)  # a block the op does not implement
    assert not ops.use_fused("reference", x)
    assert ops.use_fused("fused", x)
    with pytest.raises(ValueError, match="paper's GC block"):
        ops.use_fused("fused", x, paper_block=False)


@needs_op
def test_cached_choice_still_routes_every_input():
    # use_fused decides (impl, block, device, dtype) once; the inputs' shapes and strides are still
    # checked on every call: after the fused op was chosen for float32 on cpu, odd float32 inputs
    # still go to the reference ("auto") or are refused ("fused")
    x = torch.randn(2, 4, 3, 3)
    assert ops.use_fused("auto", x) and ops.use_fused("auto", x) and ops.use_fused("fused", x, x)
    assert not ops.use_fused("auto", x[:0])
    assert not ops.use_fused("auto", x[:, :, :, ::2])  # strides dense in neither layout
    assert not ops.use_fused("auto", x, x.transpose(2, 3))  # the residual's strides
    assert not ops.use_fused("auto", x, x[:, :, :2])  # a residual of another shape
    assert not ops.use_fused("auto", x[0])  # 3-D
    with pytest.raises(ValueError, match="residual"):
        ops.use_fused("fused", x, x[:, :, :2])


@needs_op
def test_choice_is_logged_once_per_implementation_and_device(monkeypatch, caplog):
    monkeypatch.setattr(ops, "_logged", set())
    x = torch.randn(2, 4, 3, 3)
    with caplog.at_level(logging.INFO, logger="gcrepro.ops"):
        for _ in range(3):
            ops.use_fused("auto", x)
            ops.use_fused("auto", x.to(torch.float8_e4m3fn))
    records = [r.getMessage() for r in caplog.records if r.name == "gcrepro.ops"]
    assert len(records) == 2, records  # one for the fused op on cpu, one for the reference on cpu
    assert any("float8_e4m3fn" in m for m in records), records  # the reason is in the record


# ------------------------------------------------------------------------------------- CPU parity


@needs_op
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 5, 4), (3, 5, 1, 1), (2, 3, 1, 7)])
def test_cpu_fp64_parity(shape, layout):
    _check_kernels(shape, torch.float64, "cpu", layout)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_low_precision_parity(dtype, layout):
    _check_kernels((2, 64, 13, 11), dtype, "cpu", layout)


@needs_op
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_large_hw_online_softmax(layout):
    # 96x80 positions: several chunks and several tasks per sample, merged by the online softmax;
    # sharp logits (scale 8) so the running max changes between chunks.
    _check_kernels((1, 16, 96, 80), torch.float64, "cpu", layout, logit_scale=8.0)
    _check_kernels((2, 24, 64, 50), torch.float32, "cpu", layout, logit_scale=8.0)


@needs_op
def test_cpu_peak_in_last_position():
    # The max logit sits in the very last position: the last chunk must rescale the others.
    x = torch.zeros(1, 4, 60, 60, dtype=torch.float64)
    x[0, :, -1, -1] = 1.0
    w = torch.full((1, 4, 1, 1), 20.0, dtype=torch.float64)
    for layout in ("contiguous", "channels_last"):
        context, _ = gcrepro_ops.gc_context(_layout(x, layout), w, None)
        _close(context, gc_context_reference(x, w, None).flatten(1), torch.float64, layout)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_relu_backward(dtype, layout):
    g = torch.Generator().manual_seed(0)
    out = _layout(torch.relu(torch.randn(2, 16, 9, 7, generator=g)).to(dtype), layout)
    grad = _layout(torch.randn(2, 16, 9, 7, generator=g).to(dtype), layout)
    grad_in, grad_t = gcrepro_ops.gc_add_relu_backward(grad, out)
    # grad_in selects grad or 0 (no arithmetic, nothing rounded): exact
    torch.testing.assert_close(grad_in, torch.where(out > 0, grad, 0), rtol=0, atol=0)
    _close(grad_t, grad_in.double().sum((2, 3)), torch.float32 if dtype != torch.float64 else dtype, "grad_t")


@needs_op
def test_cpu_mixed_weight_dtype():
    # Under autocast x is fp16/bf16 while conv_mask's weight stays fp32: the op takes both (and
    # returns the context unrounded, in fp32).
    x, w, b, _, _ = _inputs((2, 32, 9, 9), torch.bfloat16, "cpu", "contiguous", 4)
    context, _ = gcrepro_ops.gc_context(x, w.float(), b.float())
    assert context.dtype == torch.float32
    _close(context, gc_context_reference(x.double(), w.double(), b.double()).flatten(1), torch.bfloat16, "context")


@needs_op
def test_opcheck():
    # schema, fake kernels (shapes, strides, dtypes), torch.compile tracing of each kernel
    x, w, b, term, res = _inputs((2, 6, 4, 5), torch.float64, "cpu", "contiguous", 0)
    xc = _layout(x, "channels_last")
    context, lse = gcrepro_ops.gc_context(x, w, b)
    g = torch.randn_like(context)
    cases = [
        (gcrepro_ops.gc_context.default, (x, w, b)),
        (gcrepro_ops.gc_context.default, (xc, w, None)),
        (gcrepro_ops.gc_add.default, (x, term, res, True)),
        (gcrepro_ops.gc_add.default, (xc, term, None, False)),
        (gcrepro_ops.gc_context_backward.default, (g, torch.randn_like(lse), x, w, b, context, lse)),
        (gcrepro_ops.gc_context_backward.default, (g, None, xc, w, None, context, lse)),
        (gcrepro_ops.gc_context_backward.default, (g, None, x, w, b, context, lse, torch.randn_like(x))),
        (gcrepro_ops.gc_context_backward.default, (g, None, xc, w, b, context, lse, torch.randn_like(x))),
        (gcrepro_ops.gc_add_relu_backward.default, (torch.randn_like(x), torch.relu(x))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@needs_op
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_context_backward_grad_x_add_is_summed(layout):
    # gc_context_backward(..., grad_x_add) == gc_context_backward(...) + grad_x_add, also when
    # grad_x_add comes in the other layout (the op converts it).
    x, w, b, _, _ = _inputs((2, 12, 7, 6), torch.float64, "cpu", layout, 0)
    context, lse = gcrepro_ops.gc_context(x, w, b)
    g = torch.Generator().manual_seed(1)
    grad_c = torch.randn(context.shape, generator=g, dtype=torch.float64)
    add = torch.randn(x.shape, generator=g, dtype=torch.float64)  # contiguous: the other layout for NHWC x
    plain, gw = gcrepro_ops.gc_context_backward(grad_c, None, x, w, b, context, lse)
    summed, gw2 = gcrepro_ops.gc_context_backward(grad_c, None, x, w, b, context, lse, add)
    _close(summed, plain + add, torch.float64, "grad_x + grad_x_add")
    _close(gw2, gw, torch.float64, "grad_w")
    with pytest.raises(RuntimeError, match="grad_x_add .* must match x"):
        gcrepro_ops.gc_context_backward(grad_c, None, x, w, b, context, lse, add[:1])


@needs_op
def test_bad_inputs_name_the_problem():
    x, w, b, term, _ = _inputs((2, 4, 3, 3), torch.float32, "cpu", "contiguous", 0)
    with pytest.raises(RuntimeError, match="w \\(conv_mask weight\\) must have 4 elements"):
        gcrepro_ops.gc_context(x, w[:, :3], b)
    with pytest.raises(RuntimeError, match="x must be \\[N, C, H, W\\]"):
        gcrepro_ops.gc_add(x[0], term, None, False)
    with pytest.raises(RuntimeError, match="residual must have x's shape"):
        gcrepro_ops.gc_add(x, term, x[:1], False)


# ------------------------------------------------------------------------------- CPU ISA variants

def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# The paper's block forward and backward (every gradient) in fp32 and bf16, both layouts; prints JSON.
_ISA_SCRIPT = """
import json, sys, torch
from gcrepro import ops
from gcrepro.modeling.context_block import ContextBlock
torch.manual_seed(0)
block = ContextBlock(24, 1 / 4, impl="fused")
with torch.no_grad():
    for p in block.parameters():
        p.normal_(0, 0.5)
out = {"isa": ops.cpu_isa(), "cases": []}
for layout in ("contiguous", "channels_last"):
    x = torch.randn(2, 24, 33, 17, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    r = torch.randn_like(x)
    for dtype in (torch.float32, torch.bfloat16):
        b = block.to(dtype)
        b.zero_grad(set_to_none=True)
        lx, lr = (v.to(dtype).requires_grad_(True) for v in (x, r))
        y = b(lx, lr)
        y.backward(torch.ones_like(y))
        grads = [lx.grad, lr.grad] + [p.grad for p in b.parameters()]
        out["cases"].append([v.double().flatten().tolist() for v in [y] + grads])
json.dump(out, sys.stdout)
"""


def _run_isa_script(isa: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GCREPRO_CPU_ISA"} | ({"GCREPRO_CPU_ISA": isa} if isa else {})
    proc = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@needs_op
def test_cpu_isa_is_picked_at_run_time_and_both_variants_agree():
    # The kernels are compiled for the baseline ISA and for AVX2+FMA+F16C (csrc/cpu/isa.h); the
    # CPU's flags decide, GCREPRO_CPU_ISA=baseline (read once per process) forces the baseline. Both
    # compute the same block, forward and every gradient, up to fp32 summation order (bf16: one rounding).
    flags = _cpu_flags()
    by_cpu = "avx2" if {"avx2", "fma", "f16c"} <= flags else "baseline"  # what the CPU alone picks
    forced = os.environ.get("GCREPRO_CPU_ISA") == "baseline"
    assert ops.cpu_isa() == ("baseline" if forced else by_cpu), (ops.cpu_isa(), sorted(flags & {"avx2", "fma", "f16c"}))
    default = _run_isa_script(None)
    baseline = _run_isa_script("baseline")
    assert baseline["isa"] == "baseline"
    assert default["isa"] == by_cpu
    for case, (got, want) in enumerate(zip(default["cases"], baseline["cases"])):
        dtype = torch.float32 if case % 2 == 0 else torch.bfloat16
        for k, (a, b) in enumerate(zip(got, want)):
            _close(torch.tensor(a), torch.tensor(b), dtype, f"case {case} tensor {k}: {default['isa']} vs baseline")


# ------------------------------------------------------------------------------------------- GPU


@gpu_test
def test_cuda_extension_is_built():
    assert ops.fused_available("cuda"), f"{_extension.STATE.cuda_reason}; build: {_extension.BUILD_COMMAND}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", [(2, 64, 13, 11), (1, 8, 1, 1), (2, 2048, 25, 38), (2, 48, 200, 152)])
@gpu_test
def test_cuda_parity(shape, layout, dtype):
    _check_kernels(shape, dtype, "cuda", layout, logit_scale=4.0)
