"""ContextBlock: equality with mmcv's reference, init, residual epilogue, the choice of implementation, bad input."""
from __future__ import annotations

import logging

import pytest
import torch

import gcrepro.ops
from gcrepro.modeling.context_block import ContextBlock

COMBOS = [
    (pooling, fusion)
    for pooling in ("att", "avg")
    for fusion in (("channel_add",), ("channel_mul",), ("channel_add", "channel_mul"))
]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter (the zero-initialised ones too) so comparisons can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| relative to the largest |want| (fp64)."""
    want = want.detach().double().cpu()
    return (got.detach().double().cpu() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)


@pytest.mark.parametrize("pooling,fusion", COMBOS)
def test_equals_mmcv_context_block(pooling: str, fusion: tuple[str, ...]) -> None:
    mmcv_cnn = pytest.importorskip("mmcv.cnn")
    torch.manual_seed(0)
    ref = mmcv_cnn.ContextBlock(in_channels=64, ratio=1 / 4, pooling_type=pooling, fusion_types=fusion)
    _randomise(ref, seed=1)
    ours = ContextBlock(64, 1 / 4, pooling_type=pooling, fusion_types=fusion, impl="reference")
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names, same shapes

    x = torch.randn(2, 64, 7, 9, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = ours(x), ref(x_ref)
    assert out.shape == x.shape
    assert (out - x).abs().max() > 0.1  # random weights: the block does something
    # fp32, the same math in a different order: errors relative to each tensor's largest value
    assert _rel_err(out, out_ref) <= 1e-5

    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    assert _rel_err(x.grad, x_ref.grad) <= 1e-5
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        want = ref_grads[name].grad
        if name == "conv_mask.bias":  # the softmax cancels it: both 0 up to rounding, on conv_mask.weight's scale
            scale = ref_grads["conv_mask.weight"].grad.abs().max()
            assert p.grad.abs().max() <= 1e-4 * scale and want.abs().max() <= 1e-4 * scale
            continue
        assert _rel_err(p.grad, want) <= 1e-5, name


def test_state_dict_names_are_mmcv_names() -> None:
    block = ContextBlock(32, 1 / 16, fusion_types=("channel_add", "channel_mul"))
    assert sorted(block.state_dict()) == sorted(
        ["conv_mask.weight", "conv_mask.bias"]
        + [f"{t}.{i}.{w}" for t in ("channel_add_conv", "channel_mul_conv") for i in (0, 1, 3) for w in ("weight", "bias")]
    )
    assert block.planes == 2  # int(32 / 16)


def test_init_per_spec_and_add_block_is_identity() -> None:
    torch.manual_seed(0)
    block = ContextBlock(256, 1 / 16)  # impl "auto": the compiled op when it is built
    assert torch.count_nonzero(block.conv_mask.bias) == 0
    std = block.conv_mask.weight.std().item()
    assert 0.8 < std / (2.0 / 256) ** 0.5 < 1.2  # kaiming normal, fan_in = 256, relu gain
    t = block.channel_add_conv
    assert torch.count_nonzero(t[3].weight) == 0 and torch.count_nonzero(t[3].bias) == 0
    assert torch.count_nonzero(t[0].weight) > 0  # first conv keeps PyTorch's default init
    assert torch.equal(t[1].weight, torch.ones_like(t[1].weight)) and torch.count_nonzero(t[1].bias) == 0
    x = torch.randn(2, 256, 5, 6)
    # the last conv is zero, so the channel term is exactly 0 and x + 0 is x, in either implementation
    for impl in ("reference", "auto"):
        block.impl = impl
        assert torch.equal(block(x), x)

    _randomise(block, seed=3)
    block.reset_parameters()  # back to the identity
    assert torch.equal(block(x), x)


def test_init_channel_mul_halves() -> None:
    # sigmoid(0) = 0.5: a fresh channel_mul block scales by 0.5 (as mmcv), it is not the identity.
    block = ContextBlock(16, 1 / 4, fusion_types=("channel_mul",))
    x = torch.randn(1, 16, 4, 4)
    assert _rel_err(block(x), 0.5 * x) <= 1e-6


@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("fusion", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")])
def test_identity_argument_is_the_bottlenecks_relu_of_sum(fusion: tuple[str, ...], impl: str) -> None:
    torch.manual_seed(0)
    block = ContextBlock(32, 1 / 4, fusion_types=fusion, impl=impl)
    _randomise(block, seed=2)
    x, identity = torch.randn(2, 32, 6, 5), torch.randn(2, 32, 6, 5)
    expected = torch.relu(block(x) + identity)
    out = block(x, identity)
    assert (out == 0).any() and (out > 0).any()
    assert _rel_err(out, expected) <= 1e-5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pooling_type="max"), "pooling_type='max'"),
        (dict(fusion_types=("channel_sub",)), "fusion_types"),
        (dict(fusion_types=()), "fusion_types"),
        (dict(fusion_types="channel_add"), "fusion_types"),
        (dict(fusion_types=("channel_add", "channel_add")), "fusion_types"),
        (dict(ratio=0.0), "ratio=0.0"),
        (dict(ratio=2.0), "ratio=2.0"),
        (dict(ratio=1 / 64), "int\\(in_channels \\* ratio\\) >= 1"),
        (dict(impl="cuda"), "impl='cuda'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    args = dict(in_channels=32, ratio=1 / 16) | kwargs
    with pytest.raises(ValueError, match=match):
        ContextBlock(**args)


def test_fused_requested_but_not_built_names_the_build_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcrepro.ops, "fused_available", lambda device: False)
    block = ContextBlock(16, 1 / 4, impl="fused")
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        block(torch.randn(1, 16, 3, 3))


def test_fused_requested_for_a_block_the_op_does_not_implement_is_an_error() -> None:
    block = ContextBlock(16, 1 / 4, fusion_types=("channel_add", "channel_mul"), impl="fused")
    with pytest.raises(ValueError, match="paper's GC block"):
        block(torch.randn(1, 16, 3, 3))


def _spy_gc_block(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record every call of the compiled block (its residual given or not); the calls still run it."""
    calls: list[bool] = []
    real = gcrepro.ops.gc_block

    def spy(x, conv_mask, transform, residual=None, relu=False):
        calls.append(residual is not None)
        return real(x, conv_mask, transform, residual, relu)

    monkeypatch.setattr(gcrepro.ops, "gc_block", spy)
    return calls


@pytest.mark.skipif(not gcrepro.ops.fused_available("cpu"), reason="compiled GC op not built")
def test_auto_runs_the_compiled_op_for_the_paper_block_only(monkeypatch, caplog) -> None:
    calls = _spy_gc_block(monkeypatch)
    monkeypatch.setattr(gcrepro.ops, "_logged", set())
    x = torch.randn(2, 16, 4, 4)
    with caplog.at_level(logging.INFO, logger="gcrepro.ops"):
        block = ContextBlock(16, 1 / 4)  # att + channel_add, impl="auto"
        block(x)
        block(x, x)
        assert calls == [False, True]
        for _ in range(2):
            ContextBlock(16, 1 / 4, fusion_types=("channel_add", "channel_mul"))(x)  # not the paper's block
            ContextBlock(16, 1 / 4, pooling_type="avg")(x)
            ContextBlock(16, 1 / 4, impl="reference")(x)
            block(x, x.double())  # a residual of another dtype: inputs the kernels do not take
    assert calls == [False, True]
    records = [r.getMessage() for r in caplog.records if r.name == "gcrepro.ops"]
    # one line per decision and reason, however often it is taken: the compiled op; the reference
    # for a block that is not the paper's (both ablation blocks), for impl='reference', for the residual
    assert len(records) == 4, records
    assert sum("fused compiled op" in m for m in records) == 1
    assert any("not the paper's" in m for m in records) and any("torch.float64" in m for m in records)


def test_auto_without_build_runs_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_gc_block(monkeypatch)
    monkeypatch.setattr(gcrepro.ops, "fused_available", lambda device: False)
    block = ContextBlock(16, 1 / 4)
    _randomise(block, seed=5)
    x = torch.randn(1, 16, 3, 3)
    want = ContextBlock(16, 1 / 4, impl="reference")
    want.load_state_dict(block.state_dict())
    assert _rel_err(block(x), want(x)) == 0.0  # the same reference code on the same input
    assert calls == []


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("residual", [False, True])
def test_fused_block_equals_reference(device: str, residual: bool) -> None:
    # The fused fp32 block against the reference block run in fp64 (same weights, same inputs):
    # errors relative to each tensor's largest value, so that a gradient summed over many terms
    # with cancellation (conv_mask's) is judged by its scale, not by its smallest entries.
    if not gcrepro.ops.fused_available(device):
        pytest.skip(f"compiled GC op not built for {device} (pip install --no-build-isolation -e .)")
    torch.manual_seed(0)
    ref = ContextBlock(64, 1 / 4, impl="reference")
    _randomise(ref, seed=4)
    fused = ContextBlock(64, 1 / 4, impl="fused")
    fused.load_state_dict(ref.state_dict())
    ref, fused = ref.double(), fused.to(device)
    x = torch.randn(2, 64, 9, 7)
    identity = torch.randn(2, 64, 9, 7)
    outs, grads = [], []
    for block, dev, dtype in ((ref, "cpu", torch.float64), (fused, device, torch.float32)):
        xi = x.to(dev, dtype).requires_grad_(True)
        ii = identity.to(dev, dtype)
        out = block(xi, ii) if residual else block(xi)
        out.backward(torch.ones_like(out))
        outs.append(out.double().cpu())
        grads.append([xi.grad.double().cpu()] + [p.grad.double().cpu() for p in block.parameters()])
    names = ["x"] + [name for name, _ in ref.named_parameters()]
    for name, got, want in zip(["out"] + names, [outs[1]] + grads[1], [outs[0]] + grads[0]):
        if name == "conv_mask.bias":  # the softmax cancels it: 0 in the fused block, ~1e-16 in fp64
            assert got.abs().max().item() < 1e-6
            continue
        assert (err := _rel_err(got, want)) <= 5e-5, f"{name}: {err:.3g} of its largest value"
