"""RPN anchors at fixed strides, as mmdetection lays them out (v1 or 2.x/3.x).

torchvision's ``AnchorGenerator`` (the torchvision convention) centres each base anchor on the
cell's top-left pixel (0, 0), rounds it to integers and infers each level's stride as
``padded size // grid size``; for P6 that is not 64 when the padded side / 32 is odd (800 px: 61).
mmdetection uses each level's stride as given (4, 8, 16, 32, 64) and builds base anchors of width
``w = size / sqrt(ratio)`` and height ``h = size * sqrt(ratio)`` (ratio = h / w) as follows:

- 2.x/3.x (``mmdet/models/task_modules/prior_generators/anchor_generator.py``, ``center_offset=0``):
  ``[-w/2, -h/2, w/2, h/2]``, not rounded.
- v1 (``mmdet/core/anchor/anchor_generator.py``): centre ``c = (stride - 1) / 2``,
  ``[c - (w - 1)/2, c - (h - 1)/2, c + (w - 1)/2, c + (h - 1)/2]`` rounded to integers
  (inclusive pixel boxes).

Anchor order is torchvision's and mmdetection's: by grid cell (row-major), then ratio.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


def base_anchors(*, size: float, ratios: tuple[float, ...], stride: int, pixel_offset: float) -> Tensor:
    """The anchors of one grid cell at (0, 0): [len(ratios), 4] xyxy (see the module docstring)."""
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    scale = size / stride  # mmdetection: base_size = stride, scales = [size / stride] (8)
    ws = stride * w_ratios * scale  # [A]
    hs = stride * h_ratios * scale  # [A]
    centre = pixel_offset * (stride - 1) * 0.5
    half_w, half_h = (ws - pixel_offset) * 0.5, (hs - pixel_offset) * 0.5
    anchors = torch.stack((centre - half_w, centre - half_h, centre + half_w, centre + half_h), dim=1)  # [A, 4]
    return anchors.round() if pixel_offset else anchors


class StridedAnchorGenerator(AnchorGenerator):
    """One anchor size per level and fixed ``strides``; torchvision's ``AnchorGenerator`` interface.

    ``forward(image_list, feature_maps) -> [anchors of image i: [sum_l H_l * W_l * A, 4] float32]``.
    ``pixel_offset``: 0.0 = mmdetection 2.x/3.x anchors, 1.0 = v1's (module docstring).
    """

    def __init__(self, *, sizes: tuple[int, ...], aspect_ratios: tuple[float, ...], strides: tuple[int, ...],
                 pixel_offset: float) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"StridedAnchorGenerator: one size per stride expected; got sizes {sizes}, "
                             f"strides {strides}")
        super().__init__(sizes=tuple((s,) for s in sizes), aspect_ratios=(tuple(aspect_ratios),) * len(sizes))
        self.strides = tuple(strides)
        self.pixel_offset = pixel_offset
        self.cell_anchors = [base_anchors(size=size, ratios=tuple(aspect_ratios), stride=stride,
                                          pixel_offset=pixel_offset) for size, stride in zip(sizes, strides)]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"StridedAnchorGenerator: {len(feature_maps)} feature maps for "
                             f"{len(self.strides)} strides {self.strides}")
        device = feature_maps[0].device
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        self.set_cell_anchors(torch.float32, device)  # float32 also under autocast: 4-8 px steps at 1333 px
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))  # [sum_l H_l * W_l * A, 4]
        return [anchors for _ in image_list.image_sizes]
