"""GPU checks of the fused GC op for its first device run (issue 16): each one targets one way the
never-run CUDA kernels could be wrong, so that a failure tells a race from a formula error.
Races and memory errors themselves: scripts/gc_sanitize.py under compute-sanitizer
(scripts/gpu_check.sh). The plain parity sweep: test_gc_op.py::test_cuda_parity; edge cases on
both devices: test_gc_op_edges.py.

Every test carries @pytest.mark.gpu and skips without a CUDA device, except the CPU run of the
grad_lse gradcheck (the same helper, checked here before any GPU runs it).
"""
from __future__ import annotations

import pytest
import torch
from test_gc_block_op import _as_function, _op_args
from test_gc_op import _check_kernels, _close, _inputs, _layout, gpu_test

from gcrepro import ops
from gcrepro.modeling.context_block import ContextBlock
from gcrepro.ops.reference import gc_context_reference

gcrepro_ops = torch.ops.gcrepro
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")])]
LOW = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(autouse=True)
def _op_built(request):
    """A CUDA device without the CUDA op fails (the build step of gpu_check.sh should have made it)."""
    on_cuda = "cuda" in request.node.name or request.node.get_closest_marker("gpu")
    if on_cuda and HAS_CUDA and not ops.fused_available("cuda"):
        pytest.fail("the compiled GC op is not built for cuda (pip install --no-build-isolation -e .)")


# ------------------------------------------------------------------------------ ReLU epilogue


@pytest.mark.parametrize("shape", [(2, 16, 9, 7), (2, 24, 1, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", LOW)
@gpu_test
def test_relu_forward_and_backward_are_exact(dtype, layout, shape):
    # The ReLU selects (no arithmetic): out(relu) = relu(out(no relu)) and grad_in = grad * (out > 0)
    # bit for bit; the add itself rounds the same fp32 sum once on both devices.
    x, _, _, term, res = _inputs(shape, dtype, "cuda", layout, seed=0)
    out = gcrepro_ops.gc_add(x, term, res, True)
    assert torch.equal(out, torch.relu(gcrepro_ops.gc_add(x, term, res, False)))
    assert torch.equal(out.cpu(), gcrepro_ops.gc_add(x.cpu(), term.cpu(), res.cpu(), True))
    grad = _layout(torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype), layout).cuda()
    grad_in, grad_t = gcrepro_ops.gc_add_relu_backward(grad, out)
    assert torch.equal(grad_in, torch.where(out > 0, grad, 0))
    _close(grad_t, grad_in.double().sum((2, 3)), torch.float32, "grad_t")


# ------------------------------------------------------------------------- alignment fallback


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t (same strides) whose data starts one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].as_strided(t.shape, t.stride()).copy_(t)
    assert out.data_ptr() % 16 != 0 and out.stride() == t.stride()
    return out


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@gpu_test
def test_misaligned_input_takes_the_scalar_path(dtype, layout):
    # H*W = 64 and C = 16 are multiples of every vector width: the aligned tensors take the 16-byte
    # loads, the misaligned ones the scalar path; per element the arithmetic is the same.
    x, w, b, term, res = _inputs((2, 16, 8, 8), dtype, "cuda", layout, seed=2)
    grad = torch.randn_like(x)
    xm, resm, gradm = _misaligned(x), _misaligned(res), _misaligned(grad)
    assert torch.equal(gcrepro_ops.gc_add(xm, term, resm, True), gcrepro_ops.gc_add(x, term, res, True))
    assert torch.equal(gcrepro_ops.gc_add(xm, term, None, False), gcrepro_ops.gc_add(x, term, None, False))
    out = torch.relu(x)
    grad_in, grad_t = gcrepro_ops.gc_add_relu_backward(grad, out)
    grad_in_m, grad_t_m = gcrepro_ops.gc_add_relu_backward(gradm, _misaligned(out))
    assert torch.equal(grad_in_m, grad_in)
    _close(grad_t_m, grad_t, torch.float32, "grad_t (another summation order)")
    for got, want in zip(gcrepro_ops.gc_context(xm, w, b), gcrepro_ops.gc_context(x, w, b)):
        assert torch.equal(got, want)  # the context kernels do not depend on alignment


# --------------------------------------------------------------------------- sharp softmax


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@gpu_test
def test_peak_in_the_last_position(layout):
    # The max logit sits in the very last position: the combine must rescale every other chunk.
    x = torch.zeros(1, 4, 60, 60, dtype=torch.float64)
    x[0, :, -1, -1] = 1.0
    w = torch.full((1, 4, 1, 1), 20.0, dtype=torch.float64)
    want = gc_context_reference(x, w, None).flatten(1)
    for dtype in (torch.float64, torch.float32):
        context, _ = gcrepro_ops.gc_context(_layout(x, layout).to("cuda", dtype), w.to("cuda", dtype), None)
        _close(context, want, dtype, f"{layout} {dtype}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@gpu_test
def test_large_hw_with_sharp_logits(layout):
    # Many chunks per sample with logit scale 8: the running max changes between chunks.
    _check_kernels((1, 16, 96, 80), torch.float64, "cuda", layout, logit_scale=8.0)
    _check_kernels((2, 24, 64, 50), torch.float32, "cuda", layout, logit_scale=8.0)


# ------------------------------------------------------------------------------- odd shapes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [
    (2, 5, 7, 9),     # C < 32 (fewer channels than lanes) with H*W > 1
    (2, 48, 3, 11),   # H*W = 33: a chunk with one position
    (2, 1, 5, 7),     # C = 1
    (3, 5, 1, 1),     # H*W = 1: one position per block, channels over the lanes
    (2, 3, 11, 13),   # H*W = 143, C = 3
    (2, 2048, 1, 1),  # H*W = 1 with 64 warps' worth of channels
])
@gpu_test
def test_odd_shapes(shape, layout, dtype):
    _check_kernels(shape, dtype, "cuda", layout, seed=sum(shape))


# ------------------------------------------------------------------------- grad_lse, opcheck


class _ContextWithLse(torch.autograd.Function):
    """gc_context as a differentiable function of (x, w, b) with both outputs, so that gradcheck
    drives gc_context_backward with a grad_lse (gc_block never passes one)."""

    @staticmethod
    def forward(ctx, x, w, b):
        context, lse = gcrepro_ops.gc_context(x, w, b)
        ctx.save_for_backward(x, w, b, context, lse)
        return context, lse

    @staticmethod
    def backward(ctx, grad_context, grad_lse):
        x, w, b, context, lse = ctx.saved_tensors
        grad_x, grad_w = gcrepro_ops.gc_context_backward(grad_context, grad_lse, x, w, b, context, lse)
        return grad_x, grad_w, grad_lse.sum().reshape(b.shape)  # the bias shifts every logit: d lse / d b = 1


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_grad_lse_gradcheck(device, layout):
    if not ops.fused_available(device):
        pytest.fail(f"the compiled GC op is not built for {device}")
    for seed, shape in enumerate([(2, 5, 3, 4), (1, 3, 1, 1), (2, 4, 6, 7)]):
        x, w, b, _, _ = _inputs(shape, torch.float64, device, layout, seed, logit_scale=2.0)
        leaves = [t.detach().requires_grad_(True) for t in (x, w, b)]
        assert torch.autograd.gradcheck(_ContextWithLse.apply, leaves)


@gpu_test
def test_opcheck_on_cuda():
    for layout in ("contiguous", "channels_last"):
        x, w, b, term, res = _inputs((2, 6, 4, 5), torch.float64, "cuda", layout, 0)
        context, lse = gcrepro_ops.gc_context(x, w, b)
        g = torch.randn_like(context)
        for op, args in [
            (gcrepro_ops.gc_context.default, (x, w, b)),
            (gcrepro_ops.gc_context.default, (x.float(), w, None)),
            (gcrepro_ops.gc_add.default, (x, term, res, True)),
            (gcrepro_ops.gc_add.default, (x, term, None, False)),
            (gcrepro_ops.gc_context_backward.default, (g, torch.randn_like(lse), x, w, b, context, lse)),
            (gcrepro_ops.gc_context_backward.default, (g, None, x, w, None, context, lse, torch.randn_like(x))),
            (gcrepro_ops.gc_add_relu_backward.default, (torch.randn_like(x), torch.relu(x))),
        ]:
            torch.library.opcheck(op, args)
    for relu, residual in ((True, True), (False, False)):
        args = _op_args(0, residual=residual)
        args[-1] = relu
        args = [a.cuda().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(gcrepro_ops.gc_block.default, tuple(args))
        assert torch.autograd.gradcheck(*_as_function(args))


# ---------------------------------------------------------------------- mixed dtypes, autocast


@gpu_test
def test_bf16_x_with_fp32_weights():
    x, w, b, _, _ = _inputs((2, 32, 9, 9), torch.bfloat16, "cuda", "contiguous", 4)
    context, lse = gcrepro_ops.gc_context(x, w.float(), b.float())
    assert context.dtype == lse.dtype == torch.float32
    _close(context, gc_context_reference(x.double(), w.double(), b.double()).flatten(1), torch.float32, "context")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@gpu_test
def test_block_under_cuda_autocast(layout):
    # x arrives in bf16, the weights stay fp32; oracle: the fp32 reference block on the same rounded x
    torch.manual_seed(0)
    fused = ContextBlock(64, 1 / 4, impl="fused")
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_(0, 0.5)
    ref = ContextBlock(64, 1 / 4, impl="reference")
    ref.load_state_dict(fused.state_dict())
    fused, ref = fused.cuda(), ref.cuda()
    x = _layout(torch.randn(2, 64, 13, 11, device="cuda").to(torch.bfloat16), layout)
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fused(xi)
    out.float().square().sum().backward()
    xr = x.float().requires_grad_(True)
    ref(xr).square().sum().backward()
    assert out.dtype == torch.bfloat16 and xi.grad.dtype == torch.bfloat16
    want = ref(x.float())
    assert ((out.float() - want).abs().max() / want.abs().max()).item() <= 1e-2  # out rounded to bf16
    for (name, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters()):
        if name == "conv_mask.bias":
            continue
        err = ((p.grad - q.grad).abs().max() / q.grad.abs().max()).item()
        assert p.grad.dtype == torch.float32 and err <= 3e-2, f"grad of {name}: {err:.3g}"


# ------------------------------------------------------------- CPU vs CUDA, run to run


def _all_kernels(device: str, dtype: torch.dtype, layout: str):
    """Every kernel's outputs on one set of inputs (made on the CPU, then moved)."""
    x, w, b, term, res = _inputs((2, 96, 19, 23), dtype, "cpu", layout, seed=5, logit_scale=4.0)
    g = torch.Generator().manual_seed(6)
    grad_c = torch.randn(2, 96, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(2, generator=g, dtype=torch.float64)
    grad = _layout(torch.randn(x.shape, generator=g).to(dtype), layout)
    x, w, b, term, res, grad, grad_c, grad_lse = (t.to(device) for t in (x, w, b, term, res, grad, grad_c, grad_lse))
    context, lse = gcrepro_ops.gc_context(x, w, b)
    grad_x, grad_w = gcrepro_ops.gc_context_backward(grad_c, grad_lse, x, w, b, context, lse, grad)
    out = gcrepro_ops.gc_add(x, term, res, True)
    grad_in, grad_t = gcrepro_ops.gc_add_relu_backward(grad, out)
    return {"context": context, "lse": lse, "grad_x": grad_x, "grad_w": grad_w, "out": out,
            "grad_in": grad_in, "grad_t": grad_t}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@gpu_test
def test_cuda_equals_the_cpu_op_and_repeats_bit_for_bit(dtype, layout):
    cpu = _all_kernels("cpu", dtype, layout)
    first, second = _all_kernels("cuda", dtype, layout), _all_kernels("cuda", dtype, layout)
    for name, want in cpu.items():
        assert torch.equal(first[name], second[name]), f"{name}: two CUDA runs differ (the kernels have no atomics)"
        _close(first[name], want, dtype, f"{name}: CUDA vs the CPU op")


@gpu_test
def test_block_repeats_bit_for_bit():
    # (the transform's small matmuls are cuBLAS GEMMs on one stream: deterministic as well)
    torch.manual_seed(3)
    block = ContextBlock(128, 1 / 16, impl="fused").cuda()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 128, 25, 38, device="cuda")
    identity = torch.randn_like(x)
    runs = []
    for _ in range(2):
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = block(xi, identity)
        out.square().mean().backward()
        runs.append([out, xi.grad] + [p.grad for p in block.parameters()])
    for k, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"tensor {k} differs between two runs"


# ------------------------------------------------------------------------------ batch sizes


@gpu_test
def test_empty_batch():
    x, w, b, term, res = _inputs((0, 8, 5, 6), torch.float32, "cuda", "contiguous", 0)
    context, lse = gcrepro_ops.gc_context(x, w, b)
    assert context.shape == (0, 8) and lse.shape == (0,)
    grad_x, grad_w = gcrepro_ops.gc_context_backward(torch.zeros_like(context), None, x, w, b, context, lse)
    assert grad_x.shape == x.shape and not grad_w.any()
    assert gcrepro_ops.gc_add(x, term, res, True).shape == x.shape
    assert [t.shape for t in gcrepro_ops.gc_add_relu_backward(x, x)] == [x.shape, (0, 8)]
    block = ContextBlock(8, 1 / 4, impl="fused").cuda()
    xi = x.clone().requires_grad_(True)
    block(xi, res).sum().backward()
    assert xi.grad.shape == x.shape
    assert not ops.use_fused("auto", x)  # "auto" leaves it to the reference


@gpu_test
def test_batch_above_the_grid_limit():
    n = ops.CUDA_MAX_BATCH + 1
    x = torch.randn(n, 4, 1, 2, device="cuda")
    assert not ops.use_fused("auto", x)
    block = ContextBlock(4, 1 / 4).cuda()  # impl "auto": the reference
    ref = ContextBlock(4, 1 / 4, impl="reference").cuda()
    ref.load_state_dict(block.state_dict())
    got, want = block(x), ref(x)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-6
    with pytest.raises(RuntimeError, match="batch size 65536 exceeds 65535"):
        gcrepro_ops.gc_context(x, torch.randn(1, 4, 1, 1, device="cuda"), None)


@gpu_test
def test_other_dtypes_on_cuda():
    x = torch.randn(2, 4, 3, 3, device="cuda")
    for dtype in (torch.float8_e4m3fn, torch.int32, torch.complex64):
        assert not ops.use_fused("auto", x.to(dtype))
        with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
            gcrepro_ops.gc_add(x.to(dtype), torch.randn(2, 4, device="cuda"), None, False)


@gpu_test
def test_add_over_2_31_elements():
    # 2 x 32768 x 32769 bf16 = 2^31 + 2^16 elements (4.3 GB): 64-bit offsets in every index.
    n_elem_row = 32768 * 32769
    x = torch.randn(1, 2, 32768, 32769, device="cuda", dtype=torch.bfloat16)
    assert x.numel() > 2**31
    term = torch.tensor([[0.5, -1.25]], device="cuda")
    out = gcrepro_ops.gc_add(x, term, None, False)
    for c in range(2):  # the same fp32 sum rounded once: exact; compared a slice at a time
        xs, os_ = x[0, c].view(-1), out[0, c].view(-1)
        for start in range(0, n_elem_row, 2**28):
            sl = slice(start, start + 2**28)
            assert torch.equal(os_[sl], (xs[sl].float() + term[0, c]).to(torch.bfloat16)), (c, start)
