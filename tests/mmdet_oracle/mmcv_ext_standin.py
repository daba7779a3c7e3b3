"""A stand-in for mmcv's compiled ``mmcv._ext``, which mmcv-lite does not ship (test-only).

mmcv 2.1.0's ``mmcv/ops/*.py`` bind their kernels at import with
``ext_loader.load_ext('_ext', [names])``, which only checks that the names exist. This module
forwards the four kernels mmdetection's GCNet detectors run at test time to ``torchvision.ops``,
with mmcv's calling conventions (keyword arguments, results written into the output tensor the
caller allocated), and answers every other name with a function that raises one line naming it.
Every ``nn.Module`` stays mmcv's / mmdetection's own; only the innermost kernel call is replaced.

Conventions checked against mmcv 2.1.0 (``mmcv/ops/{nms,roi_align,deform_conv,modulated_deform_conv}.py``
and their CPU kernels):

- ``nms(boxes, scores, iou_threshold, offset)`` returns the kept indices by decreasing score
  (suppress when IoU > threshold), as ``torchvision.ops.nms``; ``offset=1`` (legacy "+1" box
  widths) has no torchvision equivalent and raises.
- ``roi_align_forward``: rois [K, 5] (batch index, x1, y1, x2, y2); ``sampling_ratio`` 0 = adaptive
  ceil(roi size / bin count); ``aligned`` shifts by -0.5 px; ``pool_mode`` 1 = average (0 = max,
  which torchvision lacks, raises). Same bilinear rule and bin averaging as ``torchvision.ops.roi_align``.
- ``deform_conv_forward`` / ``modulated_deform_conv_forward``: offset channels per deformable group
  ordered (kernel row, kernel column, (dy, dx)), the layout ``torchvision.ops.deform_conv2d`` reads;
  groups and deformable groups are implied by the weight and offset shapes and checked against
  the arguments. mmcv passes strides, paddings and dilations per axis (W and H separately).
"""
from __future__ import annotations

import importlib.util
import sys
import types

from torch import Tensor

MODULE_NAME = "mmcv._ext"
FORWARDED = ("nms", "roi_align_forward", "deform_conv_forward", "modulated_deform_conv_forward")


class StandinError(NotImplementedError):
    """An mmcv kernel, or a mode of one, that the stand-in does not provide."""


def nms(boxes: Tensor, scores: Tensor, *, iou_threshold: float, offset: int) -> Tensor:
    # boxes [N, 4] xyxy, scores [N] -> kept indices [K] by decreasing score
    from torchvision.ops import nms as tv_nms

    if offset != 0:
        raise StandinError(f"{MODULE_NAME} stand-in: nms offset={offset} (+1 box widths) is not provided; expected 0")
    return tv_nms(boxes, scores, float(iou_threshold))


def roi_align_forward(inputs: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor, *,
                      aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    # inputs [N, C, H, W], rois [K, 5] -> output [K, C, aligned_height, aligned_width], written in place
    from torchvision.ops import roi_align

    if pool_mode != 1:
        raise StandinError(f"{MODULE_NAME} stand-in: roi_align_forward pool_mode={pool_mode} (max) is not provided; "
                           "expected 1 (avg)")
    output.copy_(roi_align(inputs, rois, (aligned_height, aligned_width), spatial_scale=float(spatial_scale),
                           sampling_ratio=int(sampling_ratio), aligned=bool(aligned)))


def _check_deform_shapes(op: str, inputs: Tensor, weight: Tensor, offset: Tensor, *, kernel: tuple[int, int],
                         group: int, deformable_group: int) -> None:
    got = dict(kernel=tuple(weight.shape[2:]), group=inputs.shape[1] // weight.shape[1],
               deformable_group=offset.shape[1] // (2 * kernel[0] * kernel[1]))
    want = dict(kernel=kernel, group=group, deformable_group=deformable_group)
    if got != want or offset.shape[1] != 2 * deformable_group * kernel[0] * kernel[1]:
        raise StandinError(f"{MODULE_NAME} stand-in: {op} arguments {want} disagree with the tensor shapes "
                           f"(input {tuple(inputs.shape)}, weight {tuple(weight.shape)}, offset {tuple(offset.shape)})")


def deform_conv_forward(inputs: Tensor, weight: Tensor, offset: Tensor, output: Tensor, columns: Tensor,
                        ones: Tensor, *, kW: int, kH: int, dW: int, dH: int, padW: int, padH: int, dilationW: int,
                        dilationH: int, group: int, deformable_group: int, im2col_step: int) -> None:
    # inputs [N, Cin, H, W], offset [N, 2 dg kH kW, Ho, Wo] -> output [N, Cout, Ho, Wo], written in place
    from torchvision.ops import deform_conv2d

    _check_deform_shapes("deform_conv_forward", inputs, weight, offset, kernel=(kH, kW), group=group,
                         deformable_group=deformable_group)
    output.copy_(deform_conv2d(inputs, offset, weight, None, stride=(dH, dW), padding=(padH, padW),
                               dilation=(dilationH, dilationW)))


def modulated_deform_conv_forward(inputs: Tensor, weight: Tensor, bias: Tensor, columns: Tensor, offset: Tensor,
                                  mask: Tensor, output: Tensor, ones: Tensor, *, kernel_h: int, kernel_w: int,
                                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                                  dilation_w: int, group: int, deformable_group: int, with_bias: bool) -> None:
    # as deform_conv_forward, plus mask [N, dg kh kw, Ho, Wo] (already through the sigmoid) and a bias
    from torchvision.ops import deform_conv2d

    _check_deform_shapes("modulated_deform_conv_forward", inputs, weight, offset, kernel=(kernel_h, kernel_w),
                         group=group, deformable_group=deformable_group)
    output.copy_(deform_conv2d(inputs, offset, weight, bias if with_bias else None, stride=(stride_h, stride_w),
                               padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w), mask=mask))


def _missing(name: str):
    def kernel(*args, **kwargs):
        raise StandinError(f"{MODULE_NAME} stand-in: kernel {name!r} is not provided (only {', '.join(FORWARDED)})")

    kernel.__name__ = name
    return kernel


def _module() -> types.ModuleType:
    module = types.ModuleType(MODULE_NAME, "test-only stand-in for mmcv's compiled ops (tests/mmdet_oracle)")
    for name in FORWARDED:
        setattr(module, name, globals()[name])

    def __getattr__(name: str):  # PEP 562: mmcv's load_ext only asks hasattr at import time
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    module.__getattr__ = __getattr__
    return module


def install() -> None:
    """Put the stand-in at ``sys.modules['mmcv._ext']`` unless mmcv is absent or a compiled one exists."""
    if MODULE_NAME in sys.modules or importlib.util.find_spec("mmcv") is None:
        return
    if importlib.util.find_spec(MODULE_NAME) is not None:  # a full mmcv build: use the real kernels
        return
    if "mmcv.ops" in sys.modules:
        raise RuntimeError(f"{MODULE_NAME} stand-in: mmcv.ops was imported before the stand-in was installed; "
                           "import mmdet_oracle first")
    sys.modules[MODULE_NAME] = _module()
