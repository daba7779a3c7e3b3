"""Edge cases of the fused GC op (issue 16), on every device it has: logits of -inf, inputs the
kernels cannot take (routed by gcrepro.ops.use_fused, the one place that chooses), the batch limit
of the CUDA kernels, and the fp32 context the backward needs. CUDA cases carry @pytest.mark.gpu
and skip without a device; the CUDA-only checks of the issue are in test_gc_op_cuda.py.
"""
from __future__ import annotations

import logging
import os

import pytest
import torch

from gcrepro import ops
from gcrepro.modeling.context_block import ContextBlock
from gcrepro.ops.reference import gc_context_reference

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
pytestmark = pytest.mark.skipif(NO_EXT or not ops.fused_available("cpu"), reason="compiled GC op not built")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]
INF = float("inf")


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def _require(device: str) -> None:
    if not ops.fused_available(device):
        pytest.fail(f"the compiled GC op is not built for {device}")


def _same_nans_and_close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    """NaN exactly where the reference has NaN; elsewhere within rel of the largest finite value."""
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at {got.isnan().nonzero().tolist()[:8]}, reference at {want.isnan().nonzero().tolist()[:8]}"
    ok = ~want.isnan()
    scale = max(want[ok].abs().max().item(), 1e-12)
    err = (got[ok] - want[ok]).abs().max().item()
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} * {scale:.3g}"


class _Threads:
    """torch.set_num_threads for a block (the CPU kernels split a sample over threads)."""

    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


# ------------------------------------------------------------------------ logits of -inf (fix 1)

# (shape, layout, positions set to -inf in channel 0 of sample 0, as (rows, cols)). Each covers at
# least the first chunk of positions of the kernels that run it: CUDA chunks hold <= 32 positions;
# the CPU's hold 16-4096 (context_kernels.h: 4096 for the NCHW case below, 32 for channels_last
# with C = 1024 fp32, the issue's own input).
NEG_INF_CASES = [
    ((2, 8, 96, 96), "contiguous", (slice(0, 48), slice(None))),
    ((2, 8, 96, 96), "channels_last", (slice(0, 48), slice(None))),
    ((1, 1024, 2, 40), "channels_last", (0, slice(0, 32))),  # x[0, 0, 0, :32] = -inf, W >= 32
    ((1, 24, 3, 40), "contiguous", (0, slice(0, 32))),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(NEG_INF_CASES)))
@pytest.mark.parametrize("device", DEVICES)
def test_a_chunk_of_neg_inf_logits_does_not_poison_the_sample(device, case, dtype, threads):
    # With w[0] > 0, x = -inf makes those logits -inf: their softmax weight is 0. Before the fix, a
    # chunk with nothing else formed exp(-inf - (-inf)) = NaN and every channel of the sample was
    # NaN; the reference is NaN only in channel 0, where 0 * (-inf) enters the weighted sum.
    _require(device)
    shape, layout, (rows, cols) = NEG_INF_CASES[case]
    g = torch.Generator().manual_seed(case)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[0, 0, rows, cols] = -INF
    w = torch.randn(1, shape[1], 1, 1, generator=g, dtype=torch.float64) / shape[1] ** 0.5
    w[0, 0] = 0.5
    b = torch.randn(1, generator=g, dtype=torch.float64)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    want = gc_context_reference(x.double(), w.double(), b.double()).flatten(1)
    want_lse = torch.logsumexp(torch.nn.functional.conv2d(x.double(), w.double(), b.double()).flatten(1), dim=1)
    assert want[0, 1:].isfinite().all() and want[0, 0].isnan()  # the input is what the test says
    with _Threads(threads):
        context, lse = torch.ops.gcrepro.gc_context(_layout(x, layout).to(device), w.to(device), b.to(device))
    rel = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]  # fp32 context for bf16
    _same_nans_and_close(context, want, rel, "context")
    _same_nans_and_close(lse, want_lse, rel, "lse")


@pytest.mark.parametrize("device", DEVICES)
def test_logits_overflowing_to_neg_inf_keep_the_block_finite(device):
    # Finite x whose logits overflow fp32 to -inf (w . x ~ -1e39) over whole chunks: the reference
    # gives those positions weight 0 and a finite block output; so must the fused block.
    _require(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 96, 96, generator=g)
    x[0, 0, :48] = -3e38
    ref = ContextBlock(16, 1 / 4, impl="reference")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        ref.conv_mask.weight[0, 0] = 10.0
    fused = ContextBlock(16, 1 / 4, impl="fused")
    fused.load_state_dict(ref.state_dict())
    want = ref.double()(x.double())
    got = fused.to(device)(x.to(device))
    assert got.isfinite().all()
    assert ((got.double().cpu() - want).abs().max() / want.abs().max()).item() <= 1e-6


def test_every_logit_neg_inf_is_nan_as_in_the_reference():
    # A sample whose logits are all -inf has no softmax: torch gives NaN weights, lse -inf; so the op.
    x = torch.randn(1, 4, 5, 7, dtype=torch.float64)
    x[:, 0] = -INF
    w = torch.tensor([1.0, 0.1, 0.2, 0.3], dtype=torch.float64).view(1, 4, 1, 1)
    context, lse = torch.ops.gcrepro.gc_context(x, w, None)
    assert context.isnan().all() and gc_context_reference(x, w, None).isnan().all()
    assert lse.item() == -INF


# ------------------------------------------------------------- what the kernels take (fixes 2, 3)


@pytest.fixture
def records(monkeypatch, caplog):
    """The gcrepro.ops log lines of the test (the once-per-reason memory starts empty)."""
    monkeypatch.setattr(ops, "_logged", set())
    caplog.set_level(logging.INFO, logger="gcrepro.ops")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "gcrepro.ops"]


NOT_FOR_KERNELS = [torch.float8_e4m3fn, torch.float8_e5m2, torch.int64, torch.int32, torch.uint8, torch.bool,
                   torch.complex64]


def test_dtypes_the_kernels_do_not_take_go_to_the_reference_with_one_log_line(records):
    x = torch.randn(2, 4, 3, 3)
    for _ in range(2):
        for dtype in NOT_FOR_KERNELS:
            assert not ops.use_fused("auto", x.to(dtype)), dtype
    lines = records()
    assert len(lines) == 1 and "float8_e4m3fn" in lines[0] and "PyTorch reference" in lines[0], lines
    for dtype in NOT_FOR_KERNELS:  # impl='fused' refuses them, naming the dtype
        with pytest.raises(ValueError, match=f"impl='fused': x is a {str(dtype).removeprefix('torch.')} tensor"):
            ops.use_fused("fused", x.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int32, torch.complex64])
def test_the_op_refuses_other_dtypes_naming_them(dtype):
    # float8 passes at::isFloatingType; the op must name the input, not fail inside its dispatch
    x = torch.randn(2, 4, 3, 3).to(dtype)
    t = torch.randn(2, 4)
    for call in (lambda: torch.ops.gcrepro.gc_context(x, torch.randn(1, 4, 1, 1), None),
                 lambda: torch.ops.gcrepro.gc_add(x, t, None, False),
                 lambda: torch.ops.gcrepro.gc_add_relu_backward(x, x)):
        with pytest.raises(RuntimeError, match=r"x must be float16, bfloat16, float32 or float64, got "):
            call()


def test_empty_batch_and_non_dense_strides_go_to_the_reference_but_the_op_takes_them(records):
    x = torch.randn(2, 8, 6, 5)
    sliced = torch.randn(2, 8, 6, 10)[..., ::2]  # dense in neither layout
    for _ in range(2):
        assert not ops.use_fused("auto", x[:0])
        assert not ops.use_fused("auto", sliced)
        assert not ops.use_fused("auto", x, sliced)  # the residual's strides count too
    assert ops.use_fused("auto", x, x.contiguous(memory_format=torch.channels_last))  # dense, other layout: taken
    lines = records()
    assert len(lines) == 3, lines  # one per reason: empty batch, strides; and the fused op
    assert any("N = 0" in m for m in lines) and any("dense in neither" in m for m in lines)
    # impl='fused' runs the op on them: empty outputs, and a copy of x
    assert ops.use_fused("fused", x[:0]) and ops.use_fused("fused", sliced)
    block = ContextBlock(8, 1 / 4, impl="fused")
    empty = x[:0].requires_grad_(True)
    out = block(empty, torch.zeros_like(empty))
    out.sum().backward()
    assert out.shape == (0, 8, 6, 5) and empty.grad.shape == empty.shape
    assert all(p.grad is not None and not p.grad.any() for p in block.parameters())


def test_cuda_batch_above_the_grid_limit_goes_to_the_reference(monkeypatch, records):
    # The CUDA kernels put the batch on gridDim.y (<= 65535): larger CUDA batches run the reference
    # (fake CUDA tensors: the decision needs only their metadata). The CPU kernels have no limit.
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert torch.ops.gcrepro.cuda_context_plan(1, 1, False, 1)[3] == ops.CUDA_MAX_BATCH  # the C++ limit
    monkeypatch.setattr(ops, "fused_available", lambda device: True)
    with FakeTensorMode():
        big = torch.empty(ops.CUDA_MAX_BATCH + 1, 4, 3, 3, device="cuda")
        fits = torch.empty(ops.CUDA_MAX_BATCH, 4, 3, 3, device="cuda")
    assert not ops.use_fused("auto", big) and ops.use_fused("auto", fits)
    with pytest.raises(ValueError, match="batch of 65536 exceeds the CUDA kernels' 65535"):
        ops.use_fused("fused", big)
    assert any("65536" in m and "on cuda run the PyTorch reference" in m for m in records())
    assert ops.use_fused("auto", torch.empty(ops.CUDA_MAX_BATCH + 1, 4, 3, 3))


def test_cpu_takes_a_batch_above_the_cuda_limit():
    x = torch.randn(ops.CUDA_MAX_BATCH + 7, 3, 1, 2, dtype=torch.float64)
    w = torch.randn(1, 3, 1, 1, dtype=torch.float64)
    context, _ = torch.ops.gcrepro.gc_context(x, w, None)
    assert ((context - gc_context_reference(x, w, None).flatten(1)).abs().max() <= 1e-12).item()


# ------------------------------------------------------------------ the fp32 context (fix 4)


def _mixed_block_grads(device: str, channels: int, seed: int):
    """Weight gradients of the fused block on bf16 x with fp32 weights (as under autocast), and of
    the fp64 reference block on the same rounded inputs and weights."""
    g = torch.Generator().manual_seed(seed)
    ref = ContextBlock(channels, 1 / 16, impl="reference")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    fused = ContextBlock(channels, 1 / 16, impl="fused")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, channels, 5, 6, generator=g).to(torch.bfloat16)
    grad = torch.randn(2, channels, 5, 6, generator=g).to(torch.bfloat16)
    fused.to(device)(x.to(device).requires_grad_(True)).backward(grad.to(device))
    ref.double()(x.double().requires_grad_(True)).backward(grad.double())
    return {name: (p.grad, q.grad) for (name, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters())}


@pytest.mark.parametrize("device", DEVICES)
def test_backward_uses_the_unrounded_context(device):
    # The context [N, C] stays fp32 for bf16 x: T's first conv weight gradient (sum_n g_h x context)
    # and conv_mask's (through g . context) come out at fp32 accuracy. With the context rounded to
    # bf16 they were off by 2e-3 and 2.5e-4 of their scale at C = 2048 (fp32: <= 1.5e-6).
    _require(device)
    x = torch.randn(2, 8, 3, 3).to(device=device, dtype=torch.bfloat16)
    assert torch.ops.gcrepro.gc_context(x, torch.randn(1, 8, 1, 1, device=device), None)[0].dtype == torch.float32
    for name, (got, want) in _mixed_block_grads(device, 2048, 0).items():
        if name == "conv_mask.bias":  # the softmax cancels it: 0 in the fused block
            continue
        assert got.dtype == torch.float32
        err = ((got.double().cpu() - want).abs().max() / want.abs().max()).item()
        assert err <= 3e-5, f"grad of {name}: {err:.3g} of its scale"
