"""ContextBlock: equality with mmcv's reference, init, residual epilogue, impl switch, bad input."""
from __future__ import annotations

import logging

import pytest
import torch

import gcrepro.ops
from gcrepro.modeling import context_block as cb_module
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
    assert not torch.equal(out, x)  # random weights: the block does something
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-6)

    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-5)
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-5, atol=1e-5, msg=name)


def test_state_dict_names_are_mmcv_names() -> None:
    block = ContextBlock(32, 1 / 16, fusion_types=("channel_add", "channel_mul"))
    assert sorted(block.state_dict()) == sorted(
        ["conv_mask.weight", "conv_mask.bias"]
        + [f"{t}.{i}.{w}" for t in ("channel_add_conv", "channel_mul_conv") for i in (0, 1, 3) for w in ("weight", "bias")]
    )
    assert block.planes == 2  # int(32 / 16)


def test_init_per_spec_and_add_block_is_identity() -> None:
    torch.manual_seed(0)
    block = ContextBlock(256, 1 / 16)
    assert torch.count_nonzero(block.conv_mask.bias) == 0
    std = block.conv_mask.weight.std().item()
    assert 0.8 < std / (2.0 / 256) ** 0.5 < 1.2  # kaiming normal, fan_in = 256, relu gain
    t = block.channel_add_conv
    assert torch.count_nonzero(t[3].weight) == 0 and torch.count_nonzero(t[3].bias) == 0
    assert torch.count_nonzero(t[0].weight) > 0  # first conv keeps PyTorch's default init
    assert torch.equal(t[1].weight, torch.ones_like(t[1].weight)) and torch.count_nonzero(t[1].bias) == 0
    x = torch.randn(2, 256, 5, 6)
    assert torch.equal(block(x), x)

    _randomise(block, seed=3)
    block.reset_parameters()  # back to the identity
    assert torch.equal(block(x), x)


def test_init_channel_mul_halves() -> None:
    # sigmoid(0) = 0.5: a fresh channel_mul block scales by 0.5 (as mmcv), it is not the identity.
    block = ContextBlock(16, 1 / 4, fusion_types=("channel_mul",))
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(block(x), 0.5 * x)


@pytest.mark.parametrize("fusion", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")])
def test_forward_residual_is_relu_of_sum(fusion: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    block = ContextBlock(32, 1 / 4, fusion_types=fusion, impl="reference")
    _randomise(block, seed=2)
    x, identity = torch.randn(2, 32, 6, 5), torch.randn(2, 32, 6, 5)
    expected = torch.relu(block(x) + identity)
    out = block.forward_residual(x, identity)
    assert (out == 0).any() and (out > 0).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


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


def _spy_ops(monkeypatch: pytest.MonkeyPatch, available: bool) -> list[tuple[str, str]]:
    """Pretend the fused op is (not) built; record (op, impl) of every call; compute with the reference."""
    calls: list[tuple[str, str]] = []
    ref = gcrepro.ops.reference

    def gc_context(x, w, b, impl="reference"):
        calls.append(("gc_context", impl))
        return ref.gc_context_reference(x, w, b)

    def channel_add(x, term, residual=None, relu=False, impl="reference"):
        calls.append(("channel_add", impl))
        return ref.channel_add_reference(x, term, residual, relu)

    def gc_block(x, conv_mask, transform, residual=None, relu=False, impl="reference"):
        calls.append(("gc_block", impl))
        context = ref.gc_context_reference(x, conv_mask.weight, conv_mask.bias)
        return ref.channel_add_reference(x, transform(context), residual, relu)

    monkeypatch.setattr(gcrepro.ops, "fused_available", lambda device: available)
    monkeypatch.setattr(gcrepro.ops, "gc_context", gc_context)
    monkeypatch.setattr(gcrepro.ops, "channel_add", channel_add)
    monkeypatch.setattr(gcrepro.ops, "gc_block", gc_block)
    monkeypatch.setattr(cb_module, "_logged_impls", set())
    return calls


def test_auto_picks_fused_for_the_paper_block_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _spy_ops(monkeypatch, available=True)
    x = torch.randn(2, 16, 4, 4)
    with caplog.at_level(logging.INFO, logger="gcrepro"):
        block = ContextBlock(16, 1 / 4)  # att + channel_add, impl="auto"
        block(x)
        block.forward_residual(x, x)
    # "auto" reaches the ops, which run their kernels unless an input is one they do not take;
    # the paper block is one op (gc_block: context, transform and add in one autograd node)
    assert calls == [("gc_block", "auto")] * 2
    assert block.resolve_impl(x.device) == "fused"
    assert [r.getMessage() for r in caplog.records].count("GC block runs the fused implementation on cpu") == 1

    calls.clear()
    ContextBlock(16, 1 / 4, fusion_types=("channel_add", "channel_mul"))(x)  # not the paper block
    ContextBlock(16, 1 / 4, pooling_type="avg")(x)
    assert calls == [("gc_context", "reference"), ("channel_add", "reference"), ("channel_add", "reference")]


def test_auto_without_build_runs_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_ops(monkeypatch, available=False)
    ContextBlock(16, 1 / 4)(torch.randn(1, 16, 3, 3))
    assert calls == [("gc_block", "reference")]


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
        out = block.forward_residual(xi, ii) if residual else block(xi)
        out.backward(torch.ones_like(out))
        outs.append(out.double().cpu())
        grads.append([xi.grad.double().cpu()] + [p.grad.double().cpu() for p in block.parameters()])
    names = ["x"] + [name for name, _ in ref.named_parameters()]
    for name, got, want in zip(["out"] + names, [outs[1]] + grads[1], [outs[0]] + grads[0]):
        if name == "conv_mask.bias":  # the softmax cancels it: 0 in the fused block, ~1e-16 in fp64
            assert got.abs().max().item() < 1e-6
            continue
        err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= 3e-5, f"{name}: {err:.3g} of its largest value"
