"""Training-time augmentation done in the dataset: horizontal flip with p = 0.5 (SPEC §4).

Everything else in SPEC §4's pipeline (keep-ratio resize to (1333, 800), ImageNet mean/std
normalisation, padding to a multiple of 32) happens INSIDE the model, in torchvision's
``GeneralizedRCNNTransform``; the data pipeline must not resize or normalise.

The flip decision is a pure function of (seed, epoch, sample index): no global RNG, so it is the
same with any worker count and after a resume. The flip itself works on numpy arrays: per-image
torch ops would start intra-op threads for every image (benchmarks/RESULTS.md, "Engine notes").
"""
from __future__ import annotations

import numpy as np
import torch

from gcrepro.data.seeding import FLIP_STREAM, generator


def flip_decision(*, seed: int, epoch: int, index: int, prob: float) -> bool:
    """Whether sample ``index`` is flipped in ``epoch`` (Bernoulli(prob), reproducible)."""
    if prob <= 0.0:
        return False
    draw = torch.rand((), generator=generator(seed, FLIP_STREAM, epoch, index)).item()
    return draw < prob


def hflip(pixels: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror pixels [H, W, C], boxes [K, 4] (xyxy absolute) and masks [K, H, W] left-right."""
    width = pixels.shape[1]
    flipped_boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)  # [K, 4]
    return pixels[:, ::-1], flipped_boxes, masks[:, :, ::-1]
