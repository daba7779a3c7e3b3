"""RoI feature pooling from P2-P5 the mmdetection way (v1 or 2.x/3.x), with torchvision's pooler interface.

Every RoIAlign here is ``gcrepro.ops.roi_align``: torchvision's op, or on CPU the compiled kernels
with its rules (faster; ``GCREPRO_ROI_ALIGN=torchvision`` brings torchvision's back).

The torchvision convention uses ``torchvision.ops.MultiScaleRoIAlign`` (:class:`TorchvisionRoIAlign`): level
``floor(4 + log2(sqrt(area) / 224) + 1e-6)`` over continuous areas, scales inferred from the
feature and image sizes, ``roi_align(aligned=False)`` with the configured sampling ratio (which
stretches RoIs narrower than one feature pixel to one).

mmdetection's ``SingleRoIExtractor`` (``finest_scale=56``) and RoIAlign, reproduced by :class:`LevelRoIAlign`:

- level ``floor(log2(sqrt(w * h) / 56 + 1e-6))`` clamped to 0..3 (``map_roi_levels``), with
  ``w = x2 - x1`` (2.x/3.x: ``mmdet/models/roi_heads/roi_extractors/single_level_roi_extractor.py``)
  or ``x2 - x1 + 1`` (v1: ``mmdet/models/roi_extractors/single_level.py``); strides fixed at 4, 8, 16, 32.
- 2.x/3.x: mmcv ``RoIAlign(aligned=True)``: the RoI starts at ``x1 / stride - 0.5`` and spans
  ``(x2 - x1) / stride``; ``sampling_ratio`` 0 in every mmdetection config (adaptive: ceil(bin size)).
  This is ``torchvision.ops.roi_align(aligned=True)``, the same kernel rules.
- v1 (``mmdet/ops/roi_align/src/roi_align_kernel.cu``): the RoI runs from ``x1 / stride`` to
  ``(x2 + 1) / stride``, its size clamped at 0 (not 1), no half-pixel shift; ``sample_num=2``.
  Computed with ``roi_align(aligned=True)`` on the box shifted by half a stride (which cancels the
  -0.5) with ``x2 + 1`` (at least ``x1``); the sampling points and the bilinear rule are the same.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _filter_input, _setup_scales

from gcrepro.ops.roi_align import roi_align

FINEST_SCALE = 56.0  # mmdetection SingleRoIExtractor finest_scale (v1 and 2.x/3.x)


def roi_levels(boxes: Tensor, *, pixel_offset: float, num_levels: int, finest_scale: float = FINEST_SCALE) -> Tensor:
    """[R, 4] boxes -> [R] int64 pyramid level (0 = the finest level given), mmdetection's ``map_roi_levels``."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0] + pixel_offset) * (boxes[:, 3] - boxes[:, 1] + pixel_offset))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).to(torch.int64)


def aligned_region(boxes: Tensor, *, stride: int, pixel_offset: float) -> Tensor:
    """[r, 4] boxes -> the [r, 4] boxes that ``roi_align(aligned=True)`` pools as this convention's RoIAlign.

    pixel_offset 0: the boxes themselves. 1 (v1): x2, y2 one pixel further (and not before x1, y1),
    everything shifted by half a stride, which cancels the aligned kernel's -0.5 feature pixel.
    """
    if not pixel_offset:
        return boxes
    end = torch.maximum(boxes[:, 2:] + pixel_offset, boxes[:, :2])
    return torch.cat((boxes[:, :2], end), dim=1) + stride * 0.5


class LevelRoIAlign(nn.Module):
    """mmdetection's multi-level RoIAlign; ``forward(features, boxes, image_shapes) -> [R, C, S, S]``.

    ``features``: dict holding ``featmap_names`` (P2-P5) at ``strides``; ``boxes``: per-image [r_i, 4]
    in resized-image pixels; ``image_shapes`` is accepted for torchvision's interface and unused
    (the strides are fixed). ``pixel_offset``: 0.0 = mmdetection 2.x/3.x, 1.0 = v1.
    """

    def __init__(self, *, featmap_names: list[str], strides: tuple[int, ...], output_size: int, sampling_ratio: int,
                 pixel_offset: float) -> None:
        super().__init__()
        if len(featmap_names) != len(strides):
            raise ValueError(f"LevelRoIAlign: one stride per feature map expected; got {featmap_names}, {strides}")
        self.featmap_names = list(featmap_names)
        self.strides = tuple(strides)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.pixel_offset = pixel_offset

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]] | None = None) -> Tensor:
        maps = [features[name] for name in self.featmap_names]
        image_idx = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
        all_boxes = torch.cat(boxes, dim=0)  # [R, 4]
        levels = roi_levels(all_boxes.float(), pixel_offset=self.pixel_offset, num_levels=len(maps))  # [R]
        out = maps[0].new_zeros((len(all_boxes), maps[0].shape[1], *self.output_size))  # [R, C, S, S]
        for level, (feature, stride) in enumerate(zip(maps, self.strides)):
            idx = torch.where(levels == level)[0]
            if len(idx) == 0:
                continue
            region = aligned_region(all_boxes[idx], stride=stride, pixel_offset=self.pixel_offset)  # [r, 4]
            rois = torch.cat((image_idx[idx], region), dim=1).to(feature.dtype)  # [r, 5]
            out[idx] = roi_align(feature, rois, self.output_size, spatial_scale=1.0 / stride,
                                 sampling_ratio=self.sampling_ratio, aligned=True).to(out.dtype)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(featmap_names={self.featmap_names}, strides={self.strides}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
                f"pixel_offset={self.pixel_offset})")



class TorchvisionRoIAlign(MultiScaleRoIAlign):
    """``torchvision.ops.MultiScaleRoIAlign`` (its levels and inferred scales) pooling with ``gcrepro.ops.roi_align``:
    torchvision's ``_multiscale_roi_align`` with the RoIAlign call swapped."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        maps = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(maps, image_shapes, self.canonical_scale, self.canonical_level)
        all_boxes = torch.cat(boxes, dim=0)  # [R, 4]
        image_idx = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])  # [R, 1]
        rois = torch.cat((image_idx, all_boxes), dim=1)  # [R, 5]
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)  # [R]
        out = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))  # [R, C, S, S]
        for level, (feature, scale) in enumerate(zip(maps, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio).to(out.dtype)
        return out
