"""Matching and error measures between mmdetection's and gcrepro's outputs (``run.Outputs``).

Errors are relative to the scale of what is compared: features to each level's largest magnitude,
box coordinates to the size of the box (its longer side, at least 1 px).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


def relative_error(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max |want| (fp64)."""
    want = want.double()
    return (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)


@dataclass
class Matched:
    """Pairs of boxes of two sets, matched one to one."""

    a: Tensor  # [M] indices into the first set
    b: Tensor  # [M] indices into the second set
    iou: Tensor  # [M] IoU of each pair
    rate: float  # M / max(len(first), len(second)): 1.0 when every box of both sets has its twin


def match_boxes(a: Tensor, b: Tensor, *, labels_a: Tensor | None = None, labels_b: Tensor | None = None,
                min_iou: float = 0.5) -> Matched:
    """Greedy one-to-one matching in the order of ``a`` (by decreasing score): each box takes the
    free box of ``b`` (with the same label, when labels are given) of highest IoU, if >= ``min_iou``."""
    iou = box_iou(a.double(), b.double()) if len(a) and len(b) else torch.zeros(len(a), len(b), dtype=torch.float64)
    if labels_a is not None:
        iou = torch.where(labels_a[:, None] == labels_b[None, :], iou, torch.zeros_like(iou))
    free = torch.ones(len(b), dtype=torch.bool)
    pairs = []
    for i in range(len(a)):
        candidates = torch.where(free, iou[i], torch.full_like(iou[i], -1.0))
        if len(b) == 0:
            break
        j = int(candidates.argmax())
        if candidates[j] >= min_iou:
            free[j] = False
            pairs.append((i, j, float(candidates[j])))
    ia = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    ib = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    rate = len(pairs) / max(len(a), len(b), 1)
    return Matched(a=ia, b=ib, iou=torch.tensor([p[2] for p in pairs], dtype=torch.float64), rate=rate)


def box_error(a: Tensor, b: Tensor) -> Tensor:
    """[M] max coordinate difference of matched boxes [M, 4], relative to each box's longer side (>= 1 px)."""
    side = (a[:, 2:] - a[:, :2]).double().max(dim=1).values.clamp_min(1.0)
    return (a.double() - b.double()).abs().max(dim=1).values / side


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """[M] IoU of matched binary masks [M, H, W] (1.0 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
