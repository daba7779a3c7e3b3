"""RoIAlign: torchvision's op, or on CPU the compiled kernels of csrc/cpu/roi_align_cpu.cpp.

    roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False) -> [K, C, PH, PW]
        ``torchvision.ops.roi_align``'s arguments and result (rois a [K, 5] tensor: batch index,
        x1, y1, x2, y2); differentiable with respect to ``input``
    compiled_roi_align(input, rois) -> bool    THE choice of kernel for one call (below)

The compiled kernels compute torchvision's sampling rules with each RoI's bilinear taps computed
once for all channels; the backward runs in parallel over channel blocks without atomics. They run
when the extension is built, the tensors are float32/float64 on the CPU and ``GCREPRO_ROI_ALIGN``
is not ``torchvision``; everything else (CUDA, half precision, TorchScript) goes to torchvision's
op. ``GCREPRO_ROI_ALIGN=torchvision`` (read at every call) brings back torchvision's CPU op, to
compare the two (benchmarks/toy_step.py).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align

from gcrepro.ops import _extension

__all__ = ["IMPL_ENV", "compiled_roi_align", "roi_align"]

IMPL_ENV = "GCREPRO_ROI_ALIGN"  # "torchvision": always torchvision's op; unset or "auto": the rule above
_IMPLS = ("auto", "torchvision")
_DTYPES = (torch.float32, torch.float64)
_BUILT = _extension.STATE.cpu and hasattr(torch.ops.gcrepro, "roi_align")


def compiled_roi_align(input: Tensor, rois: Tensor) -> bool:
    """True when ``roi_align(input, rois, ...)`` runs the compiled CPU kernels, False for torchvision's op."""
    impl = os.environ.get(IMPL_ENV, "auto") or "auto"
    if impl not in _IMPLS:
        raise ValueError(f"{IMPL_ENV}={impl!r}: expected one of {'|'.join(_IMPLS)}")
    return (impl == "auto" and _BUILT and input.device.type == "cpu" and input.dtype in _DTYPES
            and rois.dtype == input.dtype and not torch.jit.is_scripting())


def roi_align(input: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """input [N, C, H, W], rois [K, 5] -> [K, C, PH, PW]: ``torchvision.ops.roi_align`` (module docstring)."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if not compiled_roi_align(input, rois):
        return torchvision_roi_align(input, rois, (ph, pw), spatial_scale, sampling_ratio, aligned)
    return torch.ops.gcrepro.roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned)


if _BUILT:
    def _setup_context(ctx, inputs, output) -> None:
        input, rois, spatial_scale, ph, pw, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, ph, pw, *input.shape, sampling_ratio, aligned)

    def _backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned = ctx.args
        grad_input = torch.ops.gcrepro.roi_align_backward(grad, rois, spatial_scale, ph, pw, n, c, h, w,
                                                          sampling_ratio, aligned)
        return grad_input, None, None, None, None, None, None

    torch.library.register_autograd("gcrepro::roi_align", _backward, setup_context=_setup_context)

    @torch.library.register_fake("gcrepro::roi_align")
    def _roi_align_fake(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned):
        return input.new_empty((rois.shape[0], input.shape[1], ph, pw))

    @torch.library.register_fake("gcrepro::roi_align_backward")
    def _roi_align_backward_fake(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned):
        return grad.new_empty((n, c, h, w))
