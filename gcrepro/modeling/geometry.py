"""Box geometry of a convention: continuous boxes, or mmdetection v1's inclusive pixel boxes.

A box ``(x1, y1, x2, y2)`` is read one of two ways:

- continuous (torchvision; mmdetection 2.x/3.x): it covers ``[x1, x2) x [y1, y2)``; width ``x2 - x1``;
  boxes are clipped to ``[0, W] x [0, H]``.
- inclusive pixels (mmdetection v1, the original GCNet code): ``x2, y2`` name the last pixel inside
  the box; width ``x2 - x1 + 1``. v1 adds this +1 wherever it measures a box: IoU
  (``mmdet/core/bbox/geometry.py`` ``bbox_overlaps``), NMS (``mmdet/ops/nms/src/nms_cpu.cpp``:
  areas and overlaps), the box coder (``mmdet/core/bbox/transforms.py``), and it clips boxes to
  ``[0, W - 1] x [0, H - 1]``.

:class:`BoxGeometry` measures, clips, matches and suppresses boxes one of the two ways
(``pixel_offset`` 0 or 1); with 0 every method is torchvision's own function, so the torchvision
convention is torchvision exactly. :class:`DeltaBoxCoder` is mmdetection's ``DeltaXYWHBBoxCoder``
(v1 or 2.x/3.x) behind torchvision's ``BoxCoder`` interface. :class:`BoxSizeFilter` is the rule
that drops small boxes, which each codebase writes differently.

v1's NMS suppresses at IoU ``>=`` the threshold, torchvision's (and mmcv's) at ``>``; here every
convention uses torchvision's NMS kernel, so v1 differs only for IoUs exactly at the threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import boxes as box_ops

PIXEL_OFFSETS = (0.0, 1.0)
# mmdetection's wh_ratio_clip=16/1000 (v1 and 2.x/3.x); torchvision's bbox_xform_clip is the same value.
LOG_SIZE_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxGeometry:
    """How a convention measures boxes: ``pixel_offset`` 0.0 (continuous) or 1.0 (v1's +1 widths)."""

    pixel_offset: float

    def __post_init__(self) -> None:
        if self.pixel_offset not in PIXEL_OFFSETS:
            raise ValueError(f"BoxGeometry pixel_offset={self.pixel_offset!r}: expected 0.0 or 1.0")

    def continuous(self, boxes: Tensor) -> Tensor:
        """[N, 4] boxes of this geometry -> the continuous boxes covering the same pixels (x2, y2 + offset)."""
        if self.pixel_offset == 0.0:
            return boxes
        return boxes + boxes.new_tensor([0.0, 0.0, self.pixel_offset, self.pixel_offset])

    def sizes(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """[N, 4] -> widths [N], heights [N]."""
        return boxes[:, 2] - boxes[:, 0] + self.pixel_offset, boxes[:, 3] - boxes[:, 1] + self.pixel_offset

    def iou(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        """[N, 4], [M, 4] -> [N, M] IoU (v1: areas and overlaps with +1)."""
        return box_ops.box_iou(self.continuous(boxes1), self.continuous(boxes2))

    def batched_nms(self, boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        """NMS within each value of ``idxs``; indices of the kept boxes by decreasing score."""
        return box_ops.batched_nms(self.continuous(boxes), scores, idxs, iou_threshold)

    def clip(self, boxes: Tensor, size: tuple[int, int]) -> Tensor:
        """[..., 4] boxes clipped to an image of ``size`` (h, w): [0, w] x [0, h] (v1: [0, w-1] x [0, h-1])."""
        if self.pixel_offset == 0.0:
            return box_ops.clip_boxes_to_image(boxes, size)
        h, w = size
        x = boxes[..., 0::2].clamp(min=0, max=w - self.pixel_offset)
        y = boxes[..., 1::2].clamp(min=0, max=h - self.pixel_offset)
        return torch.stack((x, y), dim=-1).reshape(boxes.shape)


@dataclass(frozen=True)
class BoxSizeFilter:
    """Keep boxes whose width and height exceed ``min_size`` (``inclusive``: reach it).

    torchvision: ``remove_small_boxes`` keeps w, h >= 1e-3 (RPN) and >= 1e-2 (detections);
    mmdetection 2.x/3.x RPN ``_bbox_post_process`` keeps w, h > ``min_bbox_size`` (0 in every GCNet config).
    """

    min_size: float
    inclusive: bool

    def __call__(self, boxes: Tensor) -> Tensor:
        """[N, 4] -> indices of the boxes kept."""
        if self.inclusive:
            return box_ops.remove_small_boxes(boxes, self.min_size)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return torch.where((w > self.min_size) & (h > self.min_size))[0]


class DeltaBoxCoder(BoxCoder):
    """mmdetection's ``DeltaXYWHBBoxCoder``: (dx, dy, dw, dh) of a box relative to a reference box.

    ``weights`` are torchvision's (1 / mmdetection's ``target_stds``). Differences from torchvision's
    ``BoxCoder``: the log-size deltas are clamped on both sides to +-log(1000/16) (torchvision: above
    only), and the arithmetic is float32 at least. ``pixel_offset`` 1.0 is v1's ``bbox2delta`` /
    ``delta2bbox``: widths ``x2 - x1 + 1``, decoded corners ``cx -+ (w - 1) / 2``.
    Decoding does not clip; the caller clips with its :class:`BoxGeometry`.
    """

    def __init__(self, weights: tuple[float, float, float, float], *, pixel_offset: float) -> None:
        super().__init__(weights, bbox_xform_clip=LOG_SIZE_CLIP)
        self.geometry = BoxGeometry(pixel_offset)

    def _centres_sizes(self, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w, h = self.geometry.sizes(boxes)
        return (boxes[:, 0] + boxes[:, 2]) * 0.5, (boxes[:, 1] + boxes[:, 3]) * 0.5, w, h

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """gt ``reference_boxes`` [N, 4] relative to ``proposals`` [N, 4] -> weighted deltas [N, 4]."""
        dtype = torch.promote_types(proposals.dtype, torch.float32)
        px, py, pw, ph = self._centres_sizes(proposals.to(dtype))
        gx, gy, gw, gh = self._centres_sizes(reference_boxes.to(dtype))
        wx, wy, ww, wh = self.weights
        return torch.stack((wx * (gx - px) / pw, wy * (gy - py) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=1)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Weighted deltas [N, 4K] applied to ``boxes`` [N, 4] -> boxes [N, 4K]."""
        dtype = torch.promote_types(rel_codes.dtype, torch.float32)
        rel_codes = rel_codes.to(dtype)
        px, py, pw, ph = (t[:, None] for t in self._centres_sizes(boxes.to(dtype)))  # each [N, 1]
        wx, wy, ww, wh = self.weights
        dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy  # [N, K]
        dw = (rel_codes[:, 2::4] / ww).clamp(min=-self.bbox_xform_clip, max=self.bbox_xform_clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(min=-self.bbox_xform_clip, max=self.bbox_xform_clip)
        gx, gy = px + pw * dx, py + ph * dy
        half_w = (pw * dw.exp() - self.geometry.pixel_offset) * 0.5
        half_h = (ph * dh.exp() - self.geometry.pixel_offset) * 0.5
        return torch.stack((gx - half_w, gy - half_h, gx + half_w, gy + half_h), dim=2).flatten(1)  # [N, 4K]
