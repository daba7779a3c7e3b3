"""Seeded synthetic images and mmdetection's own test-time preprocessing of them.

``synthetic_image`` draws a natural-ish RGB picture (smooth colour gradients, low-frequency waves,
filled ellipses and rectangles, a little noise) from a seed. ``mmdet_batch`` runs mmdetection's
test pipeline on it (the config's ``test_pipeline``: keep-ratio ``Resize`` by cv2 bilinear, then
``PackDetInputs``) and the model's ``DetDataPreprocessor`` (BGR -> RGB, mean/std, zero padding to
a multiple of 32), giving the padded batch and the image metas both codebases are fed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def synthetic_image(height: int, width: int, *, seed: int) -> np.ndarray:
    """[height, width, 3] uint8 RGB: gradients + waves + 12 filled shapes + noise, all from ``seed``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / width  # [H, W] in [0, 1)
    image = np.empty((height, width, 3))
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)
        fy, fx = rng.uniform(1, 4, size=2)
        image[..., c] = 128 + 60 * (a * x + b * y) + 30 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
    for _ in range(12):
        colour = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0.1, 0.9, size=2)
        ry, rx = rng.uniform(0.04, 0.25, size=2)
        if rng.random() < 0.5:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        shade = 1.0 + 0.3 * (y - cy) / ry  # a soft vertical shading inside the shape
        image[inside] = colour * shade[inside, None]
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


@dataclass
class Batch:
    """One preprocessed image, as mmdetection's data preprocessor hands it to the detector."""

    inputs: Tensor  # [1, 3, Hp, Wp] float32, RGB, (x - mean) / std, zero-padded to a multiple of 32
    data_samples: list  # [DetDataSample] with ori_shape, img_shape, scale_factor, pad_shape, batch_input_shape
    image_size: tuple[int, int]  # (h, w) of the resized image inside the padding (img_shape)
    original_size: tuple[int, int]  # (h, w) of the image before resizing (ori_shape)


def inference_pipeline(config, *, scale: tuple[int, int]):
    """The config's test pipeline for an in-memory image: load from the array, keep-ratio resize to
    fit ``scale`` (long, short), pack; annotations are not loaded."""
    from mmcv.transforms import Compose

    steps = []
    for step in config.test_dataloader.dataset.pipeline:
        kind = step["type"]
        if kind == "LoadImageFromFile":
            steps.append(dict(type="mmdet.LoadImageFromNDArray"))
        elif kind == "Resize":
            steps.append({**step, "scale": scale})
        elif kind != "LoadAnnotations":
            steps.append(dict(step))
    return Compose(steps)


def mmdet_batch(mm, image_rgb: np.ndarray, *, scale: tuple[int, int]) -> Batch:
    """mmdetection's preprocessing of one RGB uint8 image for the model ``mm`` (a ``build.MmdetModel``)."""
    pipeline = inference_pipeline(mm.config, scale=scale)
    packed = pipeline(dict(img=np.ascontiguousarray(image_rgb[..., ::-1]), img_id=0))  # mmdet reads BGR
    with torch.no_grad():
        data = mm.model.data_preprocessor(dict(inputs=[packed["inputs"]], data_samples=[packed["data_samples"]]),
                                          False)
    meta = data["data_samples"][0].metainfo
    return Batch(inputs=data["inputs"], data_samples=data["data_samples"], image_size=tuple(meta["img_shape"]),
                 original_size=tuple(meta["ori_shape"]))
