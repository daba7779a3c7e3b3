"""The compiled CPU RoIAlign (csrc/cpu/roi_align_cpu.cpp, gcrepro.ops.roi_align) against torchvision's.

The ground truth is ``torchvision.ops.roi_align`` in float64; forward and gradients with respect to
the input, both ``aligned`` settings, sampling ratio 0 (adaptive) and 2, RoIs partly or wholly
outside the map, degenerate and inverted RoIs, empty RoI sets, several images, channels_last
input. CI builds the op, so a missing build fails here; GCREPRO_NO_EXT=1 skips the kernel tests.
"""
from __future__ import annotations

import os

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from gcrepro.modeling.poolers import LevelRoIAlign, TorchvisionRoIAlign
from gcrepro.ops import roi_align as ra

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
pytestmark = pytest.mark.skipif(NO_EXT, reason="GCREPRO_NO_EXT=1: the compiled op is deliberately not used")
OUT = (3, 4)  # non-square output
SCALE = 0.5  # feature stride 2
RTOL = {torch.float32: 2e-6, torch.float64: 1e-13}  # of the reference's largest magnitude


def _rois(dtype: torch.dtype, *, n_images: int, h: int, w: int, seed: int) -> torch.Tensor:
    """[K, 5] RoIs in image pixels (2x the map): random ones reaching past every border, plus
    degenerate cases: zero width and height, inverted, wholly outside, sub-pixel, the whole image."""
    gen = torch.Generator().manual_seed(seed)
    k = 12
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([2 * w + 16.0, 2 * h + 16.0]) - 8
    wh = torch.rand(k, 2, generator=gen) * torch.tensor([w, h]) + 0.3
    random = torch.cat((xy, xy + wh), dim=1)
    special = torch.tensor([
        [5.0, 6.0, 5.0, 6.0],  # zero size
        [9.0, 9.0, 3.0, 4.0],  # inverted
        [-40.0, -40.0, -20.0, -25.0],  # wholly outside
        [7.2, 3.1, 7.6, 3.3],  # sub-pixel
        [0.0, 0.0, 2.0 * w, 2.0 * h],  # the whole image
    ])
    boxes = torch.cat((random, special))
    idx = torch.randint(0, n_images, (len(boxes), 1), generator=gen).float()
    return torch.cat((idx, boxes), dim=1).to(dtype)


def _case(dtype: torch.dtype, seed: int, channels_last: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 11, 13, generator=gen, dtype=torch.float64) * 3 + 1  # C = 5: not a vector width
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = _rois(torch.float64, n_images=3, h=11, w=13, seed=seed)
    grad = torch.randn(len(rois), 5, *OUT, generator=gen, dtype=torch.float64)
    return x, rois, grad


def _reference(x, rois, grad, sampling_ratio: int, aligned: bool):
    x = x.detach().double().requires_grad_()
    out = tv_roi_align(x, rois.double(), OUT, SCALE, sampling_ratio, aligned)
    (gx,) = torch.autograd.grad(out, x, grad.double())
    return out, gx


def _ours(x, rois, grad, dtype, sampling_ratio: int, aligned: bool):
    x = x.detach().to(dtype).requires_grad_()
    assert ra.compiled_roi_align(x, rois.to(dtype))
    out = ra.roi_align(x, rois.to(dtype), OUT, SCALE, sampling_ratio, aligned)
    (gx,) = torch.autograd.grad(out, x, grad.to(dtype))
    return out, gx


def _close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=RTOL[dtype] * scale * 8, msg=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_torchvision(dtype, aligned: bool, sampling_ratio: int, channels_last: bool) -> None:
    for seed in (0, 1):
        x, rois, grad = _case(dtype, seed, channels_last)
        ref_out, ref_gx = _reference(x, rois, grad, sampling_ratio, aligned)
        out, gx = _ours(x, rois, grad, dtype, sampling_ratio, aligned)
        assert out.dtype == gx.dtype == dtype and out.is_contiguous() and gx.shape == x.shape
        assert ref_out.abs().sum() > 0 and ref_gx.abs().sum() > 0, "a case that samples nothing tests nothing"
        _close(out, ref_out, dtype, f"forward, seed {seed}")
        _close(gx, ref_gx, dtype, f"grad input, seed {seed}")


def test_degenerate_rois_pool_zero_and_get_no_gradient() -> None:
    x, _rois_unused, _ = _case(torch.float32, 0)
    rois = torch.tensor([[0, 9.0, 9.0, 3.0, 4.0], [1, -40.0, -40.0, -20.0, -25.0]])  # inverted; outside
    x = x.float().requires_grad_()
    out = ra.roi_align(x, rois, OUT, SCALE, 0, True)
    assert out.abs().max() == 0
    out.sum().backward()
    assert x.grad.abs().max() == 0


@pytest.mark.parametrize("aligned", [False, True])
def test_empty_roi_set(aligned: bool) -> None:
    x = torch.randn(2, 4, 6, 7, requires_grad=True)
    out = ra.roi_align(x, torch.zeros(0, 5), OUT, SCALE, 2, aligned)
    assert out.shape == (0, 4, *OUT)
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().max() == 0


def test_backward_same_bits_for_any_thread_count() -> None:
    """The backward owns channel blocks per task: one sum order whatever the threads."""
    x = torch.randn(2, 64, 20, 24, requires_grad=True)
    rois = _rois(torch.float32, n_images=2, h=20, w=24, seed=3)
    grad = torch.randn(len(rois), 64, 7, 7)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            (gx,) = torch.autograd.grad(ra.roi_align(x, rois, 7, SCALE, 2, True), x, grad)
            grads.append(gx)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.3, 2.1, 9.7, 8.9], [1, 0.4, 0.6, 10.2, 8.3], [1, 3.3, 1.7, 6.1, 5.2]],
                        dtype=torch.float64)
    for aligned in (False, True):
        for sampling_ratio in (0, 2):
            assert torch.autograd.gradcheck(
                lambda t: ra.roi_align(t, rois, (2, 3), SCALE, sampling_ratio, aligned), (x,), eps=1e-6, atol=1e-6)


def test_opcheck() -> None:
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    rois = torch.tensor([[0, 1.3, 2.1, 9.7, 8.9], [1, 0.4, 0.6, 12.2, 10.3]])
    torch.library.opcheck(torch.ops.gcrepro.roi_align.default, (x, rois, SCALE, 2, 3, 2, True))
    grad = torch.randn(2, 3, 2, 3)
    torch.library.opcheck(torch.ops.gcrepro.roi_align_backward.default, (grad, rois, SCALE, 2, 3, 2, 3, 6, 7, 0, False))


def test_bad_input_is_one_line_naming_it() -> None:
    x = torch.randn(2, 3, 6, 7)
    with pytest.raises(RuntimeError, match=r"rois must have shape \[K, 5\]"):
        torch.ops.gcrepro.roi_align(x, torch.zeros(2, 4), SCALE, 2, 2, 2, True)
    with pytest.raises(RuntimeError, match=r"batch index\) must lie in \[0, 2\)"):
        torch.ops.gcrepro.roi_align(x, torch.tensor([[2.0, 0, 0, 4, 4]]), SCALE, 2, 2, 2, True)
    with pytest.raises(RuntimeError, match="expected the same dtype"):
        torch.ops.gcrepro.roi_align(x, torch.zeros(1, 5, dtype=torch.float64), SCALE, 2, 2, 2, True)


def test_the_one_choice(monkeypatch) -> None:
    x, rois = torch.randn(1, 2, 5, 5), torch.tensor([[0, 0.5, 0.5, 6.0, 7.0]])
    assert ra.compiled_roi_align(x, rois)
    assert not ra.compiled_roi_align(x.half(), rois.half())  # torchvision's op for other dtypes
    assert not ra.compiled_roi_align(x, rois.double())  # mixed dtypes: torchvision's op and its error
    monkeypatch.setenv(ra.IMPL_ENV, "torchvision")
    assert not ra.compiled_roi_align(x, rois)
    assert torch.equal(ra.roi_align(x, rois, 2, SCALE, 2, True), tv_roi_align(x, rois, 2, SCALE, 2, True))
    monkeypatch.setenv(ra.IMPL_ENV, "fast")
    with pytest.raises(ValueError, match=r"GCREPRO_ROI_ALIGN='fast': expected one of auto\|torchvision"):
        ra.compiled_roi_align(x, rois)


def _pool_features(seed: int) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    feats = {str(i): torch.randn(2, 8, 64 >> i, 48 >> i, generator=gen, requires_grad=True) for i in range(4)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(20, 2, generator=gen) * 150
        boxes.append(torch.cat((xy, xy + 2 + torch.rand(20, 2, generator=gen) * 120), dim=1))
    return feats, boxes


@pytest.mark.parametrize("pooler", ["paper", "mmdet", "torchvision"])
def test_poolers_equal_with_either_kernel(monkeypatch, pooler: str) -> None:
    """The model's poolers give torchvision's results (forward and feature gradients) with our kernel."""
    if pooler == "torchvision":
        pool = TorchvisionRoIAlign(["0", "1", "2", "3"], 7, 2)
    else:
        pool = LevelRoIAlign(featmap_names=["0", "1", "2", "3"], strides=(4, 8, 16, 32), output_size=7,
                             sampling_ratio=2 if pooler == "paper" else 0,
                             pixel_offset=1.0 if pooler == "paper" else 0.0)
    feats, boxes = _pool_features(0)
    results = {}
    for impl in ("torchvision", "auto"):
        monkeypatch.setenv(ra.IMPL_ENV, impl)
        out = pool(feats, boxes, [(256, 192)] * 2)
        grads = torch.autograd.grad(out, list(feats.values()), torch.ones_like(out), allow_unused=True)
        results[impl] = out, [torch.zeros_like(f) if g is None else g for f, g in zip(feats.values(), grads)]
    (tv_out, tv_grads), (out, grads) = results["torchvision"], results["auto"]
    assert sum(int(g.abs().sum() > 0) for g in tv_grads) >= 2, "the boxes should reach several levels"
    _close(out, tv_out.double(), torch.float32, "pooled")
    for g, tv_g in zip(grads, tv_grads):
        _close(g, tv_g.double(), torch.float32, "feature grad")
