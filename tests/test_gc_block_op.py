"""The fused GC block, torch.ops.gcrepro.gc_block (gcrepro/ops/block.py: context -> transform ->
add as ONE op, the add's gradient for x summed inside gc_context_backward), against the reference.

Every gradient is compared: x, the residual, and all eight parameters (conv_mask weight and bias,
both transform convs, LayerNorm weight and bias). GPU cases carry @pytest.mark.gpu.
"""
from __future__ import annotations

import os

import pytest
import torch

from gcrepro import ops
from gcrepro.modeling.context_block import ContextBlock
from gcrepro.ops.reference import channel_add_reference, gc_context_reference

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
pytestmark = pytest.mark.skipif(NO_EXT or not ops.fused_available("cpu"), reason="compiled GC op not built")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]
# Relative to the largest reference value (fp64 reference from the same rounded inputs). fp32: both
# sides sum in fp32 in different orders; bf16/fp16: the fused block's transform runs in fp32 while
# the reference's runs in the input dtype, so the gap is the reference's rounding, ~2**-8 for bf16.
TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| relative to the largest |want|."""
    want = want.double().cpu()
    return (got.double().cpu() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)


def _blocks(channels: int, ratio: float, seed: int, device: str, dtype: torch.dtype):
    """A reference block with every parameter random (the zero-initialised ones too) and a fused copy."""
    ref = ContextBlock(channels, ratio, impl="reference")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    fused = ContextBlock(channels, ratio, impl="fused")
    fused.load_state_dict(ref.state_dict())
    return ref.to(device, dtype), fused.to(device, dtype)


def _run(block, x, identity, residual: bool, grad):
    xi = x.detach().clone().requires_grad_(True)
    ii = identity.detach().clone().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    out = block(xi, ii) if residual else block(xi)
    out.backward(grad)
    grads = {"x": xi.grad, "identity": ii.grad if residual else None}
    grads.update({name: p.grad for name, p in block.named_parameters()})
    return out, grads


def _compare(shape, dtype, device, layout, residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    identity = torch.randn(shape, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype).contiguous(memory_format=fmt)  # noqa: E731
    ref, fused = _blocks(shape[1], 1 / 4, seed + 1, device, dtype)
    out_f, grads_f = _run(fused, cast(x), cast(identity), residual, cast(grad))
    # the oracle: the reference block in fp64 on the CPU, from the same rounded inputs and weights
    ref64 = ref.to("cpu", torch.float64)
    as64 = lambda t: cast(t).double().cpu()  # noqa: E731
    out_r, grads_r = _run(ref64, as64(x), as64(identity), residual, as64(grad))
    assert (err := _rel_err(out_f, out_r)) <= TOL[dtype], f"out: {err:.3g} of its largest value"
    assert set(grads_f) == set(grads_r)
    for name, want in grads_r.items():
        got = grads_f[name]
        if want is None:
            assert got is None, name
            continue
        assert got is not None and got.shape == want.shape and got.dtype == dtype, name
        if name == "conv_mask.bias":  # the softmax cancels it: 0 in the fused block, ~1e-17 in the reference
            assert got.abs().max().item() == 0.0 and want.abs().max().item() < 1e-6
            continue
        err = _rel_err(got, want)
        assert err <= TOL[dtype], f"grad of {name}: {err:.3g} of its largest value ({dtype}, {layout})"
    if layout == "channels_last":
        assert out_f.is_contiguous(memory_format=torch.channels_last)
        assert grads_f["x"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 16, 9, 7), (1, 8, 1, 1), (3, 12, 40, 33)])
def test_fused_block_fp64_equals_reference(shape, layout, residual):
    _compare(shape, torch.float64, "cpu", layout, residual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_block_low_precision(dtype, layout):
    # residual=True only in fp64: in low precision values near 0 can round across the ReLU kink
    _compare((2, 32, 12, 10), dtype, "cpu", layout, residual=False)


def _op_args(seed: int, dtype=torch.float64, mask_bias=True, residual=True, requires_grad=False):
    """Arguments of torch.ops.gcrepro.gc_block for C=8, P=2 on a 2x8x3x4 input (relu last, False)."""
    g = torch.Generator().manual_seed(seed)
    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

    return [r(2, 8, 3, 4), r(1, 8, 1, 1), r(1) if mask_bias else None, r(2, 8, 1, 1), r(2), r(2, 1, 1), r(2, 1, 1),
            1e-5, r(8, 2, 1, 1), r(8), r(2, 8, 3, 4) if residual else None, False]


def _op_reference(x, mask_w, mask_b, w1, b1, ln_w, ln_b, eps, w2, b2, residual, relu):
    """The block's math in PyTorch (fp64 autograd gives the expected gradients)."""
    context = gc_context_reference(x, mask_w, mask_b)  # [N, C, 1, 1]
    h = torch.nn.functional.conv2d(context, w1, b1)  # [N, P, 1, 1]
    a = torch.relu(torch.nn.functional.layer_norm(h, ln_w.shape, ln_w, ln_b, eps))
    return channel_add_reference(x, torch.nn.functional.conv2d(a, w2, b2), residual, relu)


def _as_function(args: list):
    """(f, leaves): f(*leaves) is the op's out for `args` with its tensor arguments swapped for leaves."""
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def f(*leaves):
        full = list(args)
        for i, t in zip(tensors, leaves):
            full[i] = t
        return torch.ops.gcrepro.gc_block(*full)[0]

    return f, [args[i] for i in tensors]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("mask_bias", [False, True])
def test_op_every_epilogue_against_reference_and_gradcheck(relu, residual, mask_bias):
    args = _op_args(0, mask_bias=mask_bias, residual=residual, requires_grad=True)
    args[-1] = relu
    op, leaves = _as_function(args)
    out = op(*leaves)
    want = _op_reference(*args)
    assert _rel_err(out, want) <= 1e-12
    grads = torch.autograd.grad(out.square().sum(), leaves)
    grads_want = torch.autograd.grad(want.square().sum(), leaves)
    # (fp64; LayerNorm over P = 2 values amplifies rounding in its backward: 1e-8, not 1e-12)
    for k, (got, exp) in enumerate(zip(grads, grads_want)):
        assert _rel_err(got, exp) <= 1e-8 or exp.abs().max() < 1e-12, f"gradient of tensor argument {k}"
    assert torch.autograd.gradcheck(op, leaves)


@pytest.mark.parametrize("seed", [1, 2])
def test_op_gradcheck_more_seeds(seed):
    args = _op_args(seed, requires_grad=True)
    args[-1] = True
    assert torch.autograd.gradcheck(*_as_function(args))


def test_op_opcheck():
    # schema, fake kernel (shapes, strides and dtypes of all outputs), autograd registration, and
    # AOT autograd (torch.compile's) through the registered backward
    for layout in ("contiguous", "channels_last"):
        for mask_bias, residual, relu in ((True, True, True), (False, False, False), (True, False, True)):
            args = _op_args(0, mask_bias=mask_bias, residual=residual, requires_grad=True)
            args[-1] = relu
            if layout == "channels_last":
                args[0] = args[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            torch.library.opcheck(torch.ops.gcrepro.gc_block.default, tuple(args))
    bf16 = _op_args(1, dtype=torch.bfloat16)  # x and weights in bf16: transform in fp32, out in bf16
    torch.library.opcheck(torch.ops.gcrepro.gc_block.default, tuple(bf16))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_opcheck(device):
    # gcrepro::gc_block_backward on its own (the autograd kernel calls it through the dispatcher):
    # schema, fake kernel (grad_in [0] without relu, out's layout with it), torch.compile tracing
    if not ops.fused_available(device):
        pytest.fail(f"the compiled GC op is not built for {device}")
    for relu, layout in ((True, "contiguous"), (False, "contiguous"), (True, "channels_last")):
        args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in _op_args(2, residual=relu)]
        args[-1] = relu
        if layout == "channels_last":
            args[0] = args[0].contiguous(memory_format=torch.channels_last)
        x, mask_w, mask_b, w1, b1, ln_w, ln_b, _eps, w2, b2 = args[:10]
        out, *saved = torch.ops.gcrepro.gc_block.default(*args)
        grad = torch.randn_like(out)
        torch.library.opcheck(torch.ops.gcrepro.gc_block_backward.default,
                              (grad, x, mask_w, mask_b, w1, b1, ln_w, ln_b, w2, b2, *saved, out if relu else None, relu))


def test_fused_block_is_one_autograd_node_and_x_gradient_is_not_summed_by_autograd():
    _, fused = _blocks(16, 1 / 4, 0, "cpu", torch.float32)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    identity = torch.randn(2, 16, 5, 5, requires_grad=True)
    out = fused(x, identity)
    # x and the identity feed the block's node directly: no AddBackward joins two gradients for x
    leaves = [fn.variable for fn, _ in out.grad_fn.next_functions if fn is not None and hasattr(fn, "variable")]
    assert any(v is x for v in leaves) and any(v is identity for v in leaves)
    assert {id(p) for p in fused.parameters()} <= {id(v) for v in leaves}  # every parameter too


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_fused_block_without_gradients_saves_nothing_and_matches(mode):
    ref, fused = _blocks(16, 1 / 4, 3, "cpu", torch.float64)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    identity = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    want, want_res = ref(x), ref(x, identity)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        if mode == "frozen":  # grad mode on, but nothing requires grad
            fused.requires_grad_(False)
            got, got_res = fused(x), fused(x, identity)
        else:
            with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
                got, got_res = fused(x), fused(x, identity)
        assert saved == [] and got.grad_fn is None and got_res.grad_fn is None
        fused.requires_grad_(True)
        fused(x.requires_grad_(True))
        assert saved, "with gradients the op saves what its backward needs"
    assert _rel_err(got, want) <= TOL[torch.float64]
    assert _rel_err(got_res, want_res) <= TOL[torch.float64]


def test_fused_block_refuses_forward_mode_ad_instead_of_dropping_the_tangent():
    # Dual tensors need no grad, so the op would run without its autograd formula and return the
    # output without a tangent: it must refuse.
    _, fused = _blocks(16, 1 / 4, 0, "cpu", torch.float32)
    fused.requires_grad_(False)
    x = torch.randn(2, 16, 5, 5)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        with torch.autograd.forward_ad.dual_level():
            fused(torch.autograd.forward_ad.make_dual(x, torch.randn_like(x)))
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(fused, (x,), (torch.randn_like(x),))


@pytest.mark.parametrize("seed", [0, 37])
def test_fused_block_under_cpu_autocast(seed):
    # AMP: x arrives in bf16; the fused block runs its transform in fp32 and returns bf16. Oracle:
    # the fp32 reference from the same bf16-rounded x (the reference block under autocast is no
    # oracle: its bf16 logits can be far off).
    _, fused = _blocks(32, 1 / 4, 0, "cpu", torch.float32)
    ref32, _ = _blocks(32, 1 / 4, 0, "cpu", torch.float32)
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(xi)
    out.float().square().sum().backward()
    xr = x.float().requires_grad_(True)
    out_r = ref32(xr)
    out_r.square().sum().backward()
    assert out.dtype == torch.bfloat16 and xi.grad.dtype == torch.bfloat16
    assert fused.channel_add_conv[0].weight.grad.dtype == torch.float32
    pairs = {
        "out": (out, out_r), "x.grad": (xi.grad, xr.grad),
        "conv1.weight.grad": (fused.channel_add_conv[0].weight.grad, ref32.channel_add_conv[0].weight.grad),
        "conv_mask.weight.grad": (fused.conv_mask.weight.grad, ref32.conv_mask.weight.grad),
    }
    for name, (got, want) in pairs.items():
        assert (err := _rel_err(got, want)) <= 0.03, f"{name}: {err:.3g} of its max off the fp32 reference"


def test_fused_block_torch_compile_fullgraph():
    _, fused = _blocks(16, 1 / 4, 0, "cpu", torch.float32)
    x = torch.randn(2, 16, 6, 5)
    identity = torch.randn(2, 16, 6, 5)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = fused(xe, identity)
    eager.square().sum().backward()
    grads_e = [p.grad.clone() for p in fused.parameters()]
    fused.zero_grad(set_to_none=True)
    comp = compiled(xc, identity)
    comp.square().sum().backward()
    # the same kernels in the same order: equal up to the order autograd accumulates in
    assert _rel_err(comp, eager) <= 1e-6 and _rel_err(xc.grad, xe.grad) <= 1e-6
    for ge, p in zip(grads_e, fused.parameters()):
        assert _rel_err(p.grad, ge) <= 1e-6 or ge.abs().max() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_block_on_device(device, dtype, layout):
    if not ops.fused_available(device):
        pytest.fail(f"the compiled GC op is not built for {device}")
    _compare((2, 64, 25, 19), dtype, device, layout, residual=False)
    if dtype == torch.float64:  # the ReLU epilogue (lower precision may round across its kink)
        _compare((2, 64, 25, 19), dtype, device, layout, residual=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_block_cuda_graph_capture(layout):
    # A whole train step of the block (forward, backward, parameter grads) captured in a CUDA graph
    # and replayed: no host synchronisation, no allocation outside the caching allocator.
    if not ops.fused_available("cuda"):
        pytest.fail("the compiled GC op is not built for cuda")
    _, block = _blocks(256, 1 / 16, 0, "cuda", torch.float32)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 256, 50, 76, device="cuda").contiguous(memory_format=fmt).requires_grad_(True)
    identity = torch.randn(2, 256, 50, 76, device="cuda").contiguous(memory_format=fmt)

    def step():
        block.zero_grad(set_to_none=False)
        x.grad = None
        out = block(x, identity)
        out.square().mean().backward()
        return out

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up outside the graph (also creates the .grad tensors)
            eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    eager_grads = [p.grad.clone() for p in block.parameters()]
    eager_x_grad = x.grad.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    # the same computation replayed (cuBLAS may pick other algorithms inside a graph: not bit-equal)
    assert _rel_err(captured, eager) <= 1e-6 and _rel_err(x.grad, eager_x_grad) <= 1e-6
    for p, e in zip(block.parameters(), eager_grads):
        assert _rel_err(p.grad, e) <= 1e-6
