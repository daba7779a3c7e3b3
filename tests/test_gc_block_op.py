"""The fused GC block (gcrepro/ops/block.py: context -> transform -> add as ONE autograd node, the
add's gradient for x summed inside gc_context_backward) against the reference ContextBlock.

Every gradient is compared: x, the residual, and all eight parameters (conv_mask weight and bias,
both transform convs, LayerNorm weight and bias). GPU cases carry @pytest.mark.gpu.
"""
from __future__ import annotations

import os

import pytest
import torch

from gcrepro import ops
from gcrepro.modeling.context_block import ContextBlock

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
pytestmark = pytest.mark.skipif(NO_EXT or not ops.fused_available("cpu"), reason="compiled GC op not built")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]
# Relative to the largest reference value (fp64 reference from the same rounded inputs). fp32: both
# sides sum in fp32 in different orders; bf16/fp16: the fused block's transform runs in fp32 while
# the reference's runs in the input dtype, so the gap is the reference's rounding, ~2**-8 for bf16.
TOL = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


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
    out = block.forward_residual(xi, ii) if residual else block(xi)
    out.backward(grad)
    grads = {"x": xi.grad, "identity": ii.grad if residual else None}
    grads.update({name: p.grad for name, p in block.named_parameters()})
    return out, grads


def _compare(shape, dtype, device, layout, residual, seed=0):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    identity = torch.randn(shape, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype).contiguous(memory_format=fmt)  # noqa: E731
    ref, fused = _blocks(c, 1 / 4, seed + 1, device, dtype)
    out_f, grads_f = _run(fused, cast(x), cast(identity), residual, cast(grad))
    # the oracle: the reference block in fp64 on the CPU, from the same rounded inputs and weights
    ref64 = ref.to("cpu", torch.float64)
    out_r, grads_r = _run(ref64, cast(x).double().cpu(), cast(identity).double().cpu(), residual, cast(grad).double().cpu())
    scale = max(out_r.abs().max().item(), 1e-6)
    err = (out_f.double().cpu() - out_r).abs().max().item()
    assert err <= TOL[dtype] * scale, f"out: {err:.3g} > {TOL[dtype]} * {scale:.3g}"
    assert set(grads_f) == set(grads_r)
    for name, want in grads_r.items():
        got = grads_f[name]
        if want is None:
            assert got is None, name
            continue
        assert got is not None and got.shape == want.shape and got.dtype == dtype, name
        scale = max(want.abs().max().item(), 1e-6)
        err = (got.double().cpu() - want).abs().max().item()
        # conv_mask's bias: the softmax cancels it, exactly 0 in the fused block, ~1e-17 in the reference
        assert err <= TOL[dtype] * scale or (name == "conv_mask.bias" and err < 1e-6), (
            f"grad of {name}: {err:.3g} > {TOL[dtype]} * {scale:.3g} ({dtype}, {layout})"
        )
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_block_gradcheck(seed):
    _, fused = _blocks(8, 1 / 4, seed, "cpu", torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    identity = torch.randn(2, 8, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # x and the identity through the block; then each parameter (functional_call swaps it in, so
    # gradcheck's perturbations reach FusedGCBlock's parameter inputs).
    assert torch.autograd.gradcheck(lambda x_, i_: fused.forward_residual(x_, i_), (x, identity))
    assert torch.autograd.gradcheck(lambda x_: fused(x_), (x,))
    for name, p in fused.named_parameters():
        if name == "conv_mask.bias":
            continue  # the softmax cancels it: gradient exactly zero (checked in the parity tests)
        leaf = p.detach().clone().requires_grad_(True)

        def through(v, name=name):
            return torch.func.functional_call(fused, {name: v}, (x.detach(),))

        assert torch.autograd.gradcheck(through, (leaf,)), name


def test_fused_block_is_one_autograd_node_and_x_gradient_is_not_summed_by_autograd():
    _, fused = _blocks(16, 1 / 4, 0, "cpu", torch.float32)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    out = fused(x)
    assert type(out.grad_fn).__name__ == "FusedGCBlockBackward"
    # x feeds exactly one node: no AddBackward joins two gradients for it
    assert all(type(fn).__name__ != "AddBackward0" for fn, _ in out.grad_fn.next_functions if fn is not None)



@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_fused_block_without_gradients_builds_no_node_and_matches(mode):
    # Inference takes the forward straight (no autograd.Function, nothing saved): same values.
    ref, fused = _blocks(16, 1 / 4, 3, "cpu", torch.float64)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    identity = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    want, want_res = ref(x), ref.forward_residual(x, identity)
    if mode == "frozen":  # grad mode on, but nothing requires grad
        fused.requires_grad_(False)
        got, got_res = fused(x), fused.forward_residual(x, identity)
    else:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            got, got_res = fused(x), fused.forward_residual(x, identity)
    assert got.grad_fn is None and got_res.grad_fn is None
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_res, want_res, rtol=0, atol=1e-10)


def test_fused_block_refuses_forward_mode_ad_instead_of_dropping_the_tangent():
    # Dual tensors do not require grad, but the inference path would lose their tangent: the
    # autograd.Function, which has no jvp, must say so.
    _, fused = _blocks(16, 1 / 4, 0, "cpu", torch.float32)
    fused.requires_grad_(False)
    x = torch.randn(2, 16, 5, 5)
    with pytest.raises(NotImplementedError, match="jvp"):
        with torch.autograd.forward_ad.dual_level():
            fused(torch.autograd.forward_ad.make_dual(x, torch.randn_like(x)))
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.jvp(fused, (x,), (torch.randn_like(x),))

@pytest.mark.parametrize("seed", [0, 37])
def test_fused_block_under_cpu_autocast(seed):
    # AMP: x arrives in bf16; the fused block runs its transform in fp32 and returns bf16. Oracle:
    # the fp32 reference from the same bf16-rounded x. (The reference block under autocast is no
    # oracle: its bf16 logits can be far off; measured for seed 37: x.grad 72% of its max off the
    # fp32 result, the fused block 0.2%. Over 60 seeds the fused block stayed within 1.3%.)
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
        err = (got.float() - want).abs().max().item() / want.abs().max().item()
        assert err <= 0.03, f"{name}: {err:.3g} of its max off the fp32 reference"


def test_fused_block_torch_compile_fullgraph():
    _, fused = _blocks(16, 1 / 4, 0, "cpu", torch.float32)
    x = torch.randn(2, 16, 6, 5)
    identity = torch.randn(2, 16, 6, 5)
    compiled = torch.compile(fused.forward_residual, backend="aot_eager", fullgraph=True)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = fused.forward_residual(xe, identity)
    eager.square().sum().backward()
    grads_e = [p.grad.clone() for p in fused.parameters()]
    fused.zero_grad(set_to_none=True)
    comp = compiled(xc, identity)
    comp.square().sum().backward()
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(xc.grad, xe.grad)
    for ge, p in zip(grads_e, fused.parameters()):
        torch.testing.assert_close(p.grad, ge)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_context_backward_grad_x_add_is_summed(layout):
    # gc_context_backward(..., grad_x_add) == gc_context_backward(...) + grad_x_add, also when
    # grad_x_add comes in the other layout (the op converts it).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 7, 6, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(1, 12, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(1, generator=g, dtype=torch.float64)
    context, lse = torch.ops.gcrepro.gc_context(x, w, b)
    grad_c = torch.randn(context.shape, generator=g, dtype=torch.float64)
    add = torch.randn(x.shape, generator=g, dtype=torch.float64)  # contiguous: the other layout for NHWC x
    plain, gw = torch.ops.gcrepro.gc_context_backward(grad_c, None, x, w, b, context, lse)
    summed, gw2 = torch.ops.gcrepro.gc_context_backward(grad_c, None, x, w, b, context, lse, add)
    torch.testing.assert_close(summed, plain + add, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw2, gw, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="grad_x_add .* must match x"):
        torch.ops.gcrepro.gc_context_backward(grad_c, None, x, w, b, context, lse, add[:1])


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
        out = block.forward_residual(x, identity)
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
    torch.testing.assert_close(captured, eager)
    torch.testing.assert_close(x.grad, eager_x_grad)
    for p, e in zip(block.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, e)
