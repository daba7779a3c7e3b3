"""Mask geometry per convention: pasting 28x28 predictions into the image, and training targets.

Pasting (test time; boxes in original-image pixels, masks [K, 1, M, M] probabilities):

- torchvision: its ``paste_masks_in_image`` (box expanded by one mask cell each side, resized to
  the integer box + 1, pasted at the truncated corner).
- mmdetection 2.x/3.x: :func:`paste_masks_grid_sample`, ``_do_paste_mask`` of
  ``mmdet/models/roi_heads/mask_heads/fcn_mask_head.py``: each pixel centre ``(x + 0.5, y + 0.5)``
  samples the mask with ``grid_sample(align_corners=False)`` and zero padding, the box mapped to the
  mask's outer edges; pixels more than one pixel outside the box stay 0 (its CPU path, one box at a
  time). mmdetection binarises with ``>= mask_thr_binary``.
- v1: :func:`paste_masks_resized`, ``get_seg_masks`` of ``mmdet/models/mask_heads/fcn_mask_head.py``:
  box corners truncated to integers, the mask resized (bilinear, half-pixel centres: cv2's
  ``INTER_LINEAR`` on float32) to ``(y2 - y1 + 1, x2 - x1 + 1)`` and pasted at ``(x1, y1)``. v1
  binarises with ``> mask_thr_binary``.

Training targets (``[P, M, M]`` for the positive RoIs, in resized-image pixels):

- torchvision: its ``project_masks_on_boxes``: ``roi_align(aligned=False)`` of the gt mask, soft values.
- mmdetection 2.x/3.x: :func:`mask_targets_roi_align`, ``mask_target_single`` + ``BitmapMasks.crop_and_resize``:
  RoI clipped to the image, ``roi_align(aligned=True, sampling_ratio=0)``, binarised at ``>= 0.5``.
- v1: :func:`mask_targets_crop_resize`, ``mmdet/core/mask/mask_target.py``: the gt mask cropped at
  the truncated integer RoI (``x2 - x1 + 1`` wide), resized to M x M bilinear, binarised. v1 resizes
  the uint8 crop with cv2 (fixed-point weights, rounded to 0/1); here the float resize is
  thresholded at 0.5, which differs only where the interpolated value is within cv2's rounding of 0.5.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from gcrepro.ops.roi_align import roi_align

MaskTargets = Callable[[Tensor, Tensor, Tensor, int], Tensor]  # (gt_masks, boxes, matched_idxs, M) -> [P, M, M]
MaskPaster = Callable[[Tensor, Tensor, tuple[int, int]], Tensor]  # (masks, boxes, (h, w)) -> [K, 1, h, w]


def paste_masks_grid_sample(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """mmdetection 2.x/3.x: [K, 1, M, M] probabilities, [K, 4] boxes -> [K, 1, h, w] probabilities."""
    h, w = size
    out = masks.new_zeros((len(masks), 1, h, w), dtype=torch.float32)
    for k in range(len(masks)):
        x0, y0, x1, y1 = boxes[k].float().tolist()
        # the region mmdetection's CPU path pastes: one pixel beyond the box, inside the image
        c0, r0 = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        c1, r1 = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        xs = (torch.arange(c0, c1, device=masks.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(r0, r1, device=masks.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        xs, ys = xs.masked_fill(xs.isinf(), 0.0), ys.masked_fill(ys.isinf(), 0.0)  # zero-size box, as mmdetection
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)  # [r, c, 2] as (x, y)
        out[k, 0, r0:r1, c0:c1] = F.grid_sample(masks[k:k + 1].float(), grid[None], align_corners=False)[0, 0]
    return out


def paste_masks_resized(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """v1: [K, 1, M, M] probabilities, [K, 4] inclusive-pixel boxes -> [K, 1, h, w] probabilities."""
    h, w = size
    out = masks.new_zeros((len(masks), 1, h, w), dtype=torch.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes.float().trunc().to(torch.int64).tolist()):
        bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        resized = F.interpolate(masks[k:k + 1].float(), size=(bh, bw), mode="bilinear", align_corners=False)
        c0, r0 = max(x1, 0), max(y1, 0)
        c1, r1 = min(x1 + bw, w), min(y1 + bh, h)
        if c1 > c0 and r1 > r0:
            out[k, 0, r0:r1, c0:c1] = resized[0, 0, r0 - y1:r1 - y1, c0 - x1:c1 - x1]
    return out


def mask_targets_roi_align(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """mmdetection 2.x/3.x: [G, H, W] masks, [P, 4] RoIs -> [P, M, M] in {0, 1}.

    The masks come padded with the batch (``DetectionTransform``), as mmdetection pads them: RoIs at
    the image's right or bottom edge sample zeros beyond it, not a repeated last row."""
    h, w = gt_masks.shape[-2:]
    clipped = torch.stack((boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                           boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)), dim=1)  # [P, 4]
    rois = torch.cat((torch.arange(len(boxes), device=boxes.device, dtype=clipped.dtype)[:, None], clipped), dim=1)
    crops = roi_align(gt_masks[matched_idxs][:, None].to(clipped.dtype), rois, (size, size), 1.0,
                      sampling_ratio=0, aligned=True)[:, 0]  # [P, M, M]
    return (crops >= 0.5).to(boxes.dtype)


def mask_targets_crop_resize(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """v1: [G, H, W] masks, [P, 4] inclusive-pixel RoIs -> [P, M, M] in {0, 1}."""
    h, w = gt_masks.shape[-2:]
    targets = boxes.new_zeros((len(boxes), size, size))
    corners = boxes.detach().float().trunc().to(torch.int64).tolist()
    for p, ((x1, y1, x2, y2), g) in enumerate(zip(corners, matched_idxs.tolist())):
        bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)  # RoIs are clipped to the image already
        crop = gt_masks[g, y1:y1 + bh, x1:x1 + bw]  # [bh, bw], fewer where the RoI leaves the mask
        resized = F.interpolate(crop[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)
        targets[p] = (resized[0, 0] >= 0.5).to(boxes.dtype)
    return targets


def mask_loss(mask_logits: Tensor, proposals: list[Tensor], gt_masks: list[Tensor], gt_labels: list[Tensor],
              matched_idxs: list[Tensor], *, targets_fn: MaskTargets) -> Tensor:
    """Mean binary cross entropy of each positive RoI's gt-class mask logits [P, K, M, M] against its
    target (torchvision's ``maskrcnn_loss``, upstream ``CrossEntropyLoss(use_mask=True)``)."""
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched_idxs)])  # [P]
    targets = torch.cat([targets_fn(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched_idxs)])  # [P, M, M]
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(mask_logits[torch.arange(len(labels), device=labels.device), labels],
                                              targets)
