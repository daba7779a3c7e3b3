"""Training-time augmentation done in the dataset: horizontal flip with p = 0.5 (SPEC §4).

Everything else in SPEC §4's pipeline (keep-ratio resize to (1333, 800), ImageNet mean/std
normalisation, padding to a multiple of 32) happens INSIDE the model, in torchvision's
``GeneralizedRCNNTransform``; the data pipeline must not resize or normalise.

The flip decision is a pure function of (seed, epoch, sample index): no global RNG, so it is the
same with any worker count and after a resume.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gcrepro.data.seeding import FLIP_STREAM, generator


def flip_decision(*, seed: int, epoch: int, index: int, prob: float) -> bool:
    """Whether sample ``index`` is flipped in ``epoch`` (Bernoulli(prob), reproducible)."""
    if prob <= 0.0:
        return False
    draw = torch.rand((), generator=generator(seed, FLIP_STREAM, epoch, index)).item()
    return draw < prob


def hflip(image: Tensor, target: dict[str, Tensor | int]) -> tuple[Tensor, dict[str, Tensor | int]]:
    """Mirror an image [C, H, W] and its target (boxes [K, 4] xyxy absolute, masks [K, H, W])."""
    width = image.shape[-1]
    out = dict(target)
    boxes = target["boxes"]  # [K, 4] x0, y0, x1, y1
    out["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    out["masks"] = target["masks"].flip(-1)  # [K, H, W]
    return image.flip(-1), out  # [C, H, W]
