"""Conventions: whose detection geometry a detector reproduces. ``ModelConfig.conventions`` picks one.

The architecture and the state-dict layout are the same in all three; they differ in how boxes are
measured, anchored, pooled, post-processed and pasted. :data:`CONVENTIONS` is the table and
:func:`convention_parts` the one place that turns an entry into the parts ``build_detector`` assembles.

- ``paper``: mmdetection v1 as the original GCNet code runs it (``xvjiarui/GCNet``), in training and
  test: inclusive pixel boxes, +1 in every width (box coder, IoU, NMS, RoI level, RoIAlign end, mask
  paste) and clipping to ``[0, W - 1]``; anchors centred at ``(stride - 1) / 2`` and rounded; RoIAlign
  from ``x1 / s`` to ``(x2 + 1) / s``, 2 samples per bin; no small-box filter; boxes scaled by one
  factor; masks resized to the integer box (``get_seg_masks``); mask targets cropped at the integer
  RoI and resized (``mask_target.py``).
- ``mmdet``: mmdetection 2.x/3.x (reference 3.3.0): continuous boxes; anchors centred at 0, not
  rounded; RoI level ``floor(log2(sqrt(wh) / 56 + 1e-6))``; RoIAlign ``aligned=True`` (and
  ``sampling_ratio=0``: ``CONVENTION_PRESETS["mmdet"]``); the RPN keeps w, h > 0; detections keep
  small boxes; boxes scaled per axis; masks pasted by ``grid_sample`` (``_do_paste_mask``); mask
  targets by aligned RoIAlign, binarised.
- ``torchvision``: ``maskrcnn_resnet50_fpn``'s own ``AnchorGenerator`` (rounded, stride inferred),
  ``BoxCoder``, ``MultiScaleRoIAlign`` (``aligned=False``), ``GeneralizedRCNNTransform`` (floor resize),
  small-box rules (w, h >= 1e-3 proposals, >= 1e-2 detections), ``paste_masks_in_image``, soft mask targets.

``paper`` and ``mmdet`` share the fixed strides 4-64, mmcv's resize rule ``int(side * scale + 0.5)``
and mmdetection's level mapping; all three share the RPN sequence (top-k per level, NMS per level,
top-k overall), scores ``> score_thresh`` and class-wise NMS. Not reproduced exactly: v1 suppresses
at IoU ``>=`` (here ``>``) and runs the box NMS on boxes already scaled back to the original image
(here in the resized image, like 2.x/3.x; with +1 widths the IoUs differ slightly); cv2's uint8
resizes (images; v1's mask targets). The parts' module docstrings say where, and each names the
source file it follows: :mod:`~gcrepro.modeling.geometry`, :mod:`~gcrepro.modeling.anchors`,
:mod:`~gcrepro.modeling.poolers`, :mod:`~gcrepro.modeling.masks`, :mod:`~gcrepro.modeling.transform`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from gcrepro.modeling.anchors import StridedAnchorGenerator
from gcrepro.modeling.config import ModelConfig
from gcrepro.modeling.geometry import BoxGeometry, BoxSizeFilter, DeltaBoxCoder
from gcrepro.modeling.masks import (
    MaskPaster, MaskTargets, mask_targets_crop_resize, mask_targets_roi_align, paste_masks_grid_sample,
    paste_masks_resized,
)
from gcrepro.modeling.poolers import LevelRoIAlign, TorchvisionRoIAlign
from gcrepro.modeling.transform import DetectionTransform

FPN_STRIDES = (4, 8, 16, 32, 64)  # P2-P6; anchors on all five, RoIs pooled from P2-P5
ROI_LEVELS = ["0", "1", "2", "3"]  # BackboneWithFPN names of P2-P5


@dataclass(frozen=True)
class Convention:
    """What one codebase does where the three differ (module docstring)."""

    name: str
    pixel_offset: float  # BoxGeometry: 1.0 = v1's inclusive pixel boxes, 0.0 = continuous
    torchvision_parts: bool  # torchvision's AnchorGenerator, BoxCoder, MultiScaleRoIAlign, GeneralizedRCNNTransform
    proposal_size_filter: BoxSizeFilter | None  # RPN small-box rule after clipping
    detection_size_filter: BoxSizeFilter | None  # box-head small-box rule after clipping
    mask_targets: MaskTargets
    paste_masks: MaskPaster
    single_scale: bool  # boxes scaled by one factor (v1's scale_factor), not per axis


CONVENTIONS: dict[str, Convention] = {
    "paper": Convention(
        name="paper", pixel_offset=1.0, torchvision_parts=False, proposal_size_filter=None,
        detection_size_filter=None, mask_targets=mask_targets_crop_resize, paste_masks=paste_masks_resized,
        single_scale=True),
    "mmdet": Convention(
        name="mmdet", pixel_offset=0.0, torchvision_parts=False,
        proposal_size_filter=BoxSizeFilter(0.0, inclusive=False), detection_size_filter=None,
        mask_targets=mask_targets_roi_align, paste_masks=paste_masks_grid_sample, single_scale=False),
    "torchvision": Convention(
        name="torchvision", pixel_offset=0.0, torchvision_parts=True,
        proposal_size_filter=BoxSizeFilter(1e-3, inclusive=True),
        detection_size_filter=BoxSizeFilter(1e-2, inclusive=True), mask_targets=project_masks_on_boxes,
        paste_masks=paste_masks_in_image, single_scale=False),  # paste_masks: what GeneralizedRCNNTransform calls
}


@dataclass(frozen=True)
class Parts:
    """The convention-dependent parts of one detector, built from a ModelConfig."""

    convention: Convention
    geometry: BoxGeometry
    box_coder: Callable[[tuple[float, float, float, float]], BoxCoder]  # weights -> coder
    anchor_generator: AnchorGenerator
    box_roi_pool: nn.Module
    mask_roi_pool: nn.Module
    transform: GeneralizedRCNNTransform


def convention_parts(c: ModelConfig) -> Parts:
    """The parts of ``c.conventions`` at the sizes ``c`` gives."""
    conv = CONVENTIONS[c.conventions]
    geometry = BoxGeometry(conv.pixel_offset)
    sizes, ratios = tuple(c.anchor_sizes), tuple(c.anchor_ratios)
    if conv.torchvision_parts:
        return Parts(
            convention=conv, geometry=geometry, box_coder=BoxCoder,
            anchor_generator=AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=(ratios,) * len(sizes)),
            box_roi_pool=TorchvisionRoIAlign(ROI_LEVELS, c.box_roi_size, c.roi_sampling_ratio),
            mask_roi_pool=TorchvisionRoIAlign(ROI_LEVELS, c.mask_roi_size, c.roi_sampling_ratio),
            transform=GeneralizedRCNNTransform(c.min_size, c.max_size, list(c.image_mean), list(c.image_std),
                                               size_divisible=c.size_divisible))

    def pool(size: int) -> LevelRoIAlign:
        return LevelRoIAlign(featmap_names=ROI_LEVELS, strides=FPN_STRIDES[:len(ROI_LEVELS)], output_size=size,
                             sampling_ratio=c.roi_sampling_ratio, pixel_offset=conv.pixel_offset)

    return Parts(
        convention=conv, geometry=geometry, box_coder=functools.partial(DeltaBoxCoder, pixel_offset=conv.pixel_offset),
        anchor_generator=StridedAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=FPN_STRIDES,
                                                pixel_offset=conv.pixel_offset),
        box_roi_pool=pool(c.box_roi_size), mask_roi_pool=pool(c.mask_roi_size),
        transform=DetectionTransform(min_size=c.min_size, max_size=c.max_size, image_mean=list(c.image_mean),
                                     image_std=list(c.image_std), size_divisible=c.size_divisible, geometry=geometry,
                                     single_scale=conv.single_scale, paste_masks=conv.paste_masks))
