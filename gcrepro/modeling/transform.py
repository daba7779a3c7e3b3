"""Input and output geometry of the mmdetection conventions, as a torchvision ``GeneralizedRCNNTransform``.

Normalisation (ImageNet mean/std on RGB in [0, 1]) and padding (bottom/right, zeros after
normalising, to a multiple of 32) are torchvision's. What differs from ``GeneralizedRCNNTransform``
(the torchvision convention):

- resized size: mmcv's ``imrescale`` rule (v1 and 2.x/3.x alike): ``scale = min(max_size / long side,
  min_size / short side)``, new side ``int(side * scale + 0.5)``; torchvision floors ``side * scale``.
  The interpolation stays torch's bilinear (``align_corners=False``, no antialiasing) on the
  normalised float image; mmdetection resizes the uint8 BGR image with cv2's ``INTER_LINEAR``
  (fixed-point weights, rounded to uint8) before normalising, so pixels can differ by about one
  grey level. Training masks are resized by nearest neighbour (as mmcv) and zero-padded to the
  batch size (mmdetection pads masks with the image; the mask targets of RoIs at the border read it).
- boxes back to the original image: 2.x/3.x divide by the per-axis factors ``new side / old side``;
  v1 divides by its single ``scale`` (``img_meta['scale_factor']``); gt boxes are scaled the same way.
- v1's inclusive pixel boxes (:mod:`gcrepro.modeling.geometry`): gt boxes ``(x1, y1, x2, y2)``
  arrive continuous, as for every convention, and become ``(x1, y1, x2 - 1, y2 - 1)`` before they
  are scaled and clipped to ``[0, W' - 1]`` (v1's ``CocoDataset``: ``x1 + w - 1``, then
  ``BboxTransform``); detections leave as continuous boxes again (x2, y2 + 1, v1's ``xyxy2xywh``).
  Outside the model, every convention speaks torchvision's continuous xyxy in original pixels.
- masks are pasted by the convention's paster (:mod:`gcrepro.modeling.masks`) with the boxes in
  original-image pixels (v1: its inclusive boxes).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from gcrepro.modeling.geometry import BoxGeometry
from gcrepro.modeling.masks import MaskPaster


def rescale_factor(size: tuple[int, int], min_size: int, max_size: int) -> float:
    """mmcv ``imrescale``: the one scale that fits ``size`` (h, w) into (max_size, min_size)."""
    return min(max_size / max(size), min_size / min(size))


def rescaled_size(size: tuple[int, int], min_size: int, max_size: int) -> tuple[int, int]:
    """mmcv ``rescale_size``: (h, w) -> (int(h * scale + 0.5), int(w * scale + 0.5))."""
    scale = rescale_factor(size, min_size, max_size)
    return int(size[0] * scale + 0.5), int(size[1] * scale + 0.5)


class DetectionTransform(GeneralizedRCNNTransform):
    """mmdetection's resize rule, box scaling and mask pasting (module docstring).

    ``geometry``: the convention's :class:`BoxGeometry` (v1: inclusive pixel boxes inside the model);
    ``single_scale``: scale boxes by v1's one factor instead of per axis; ``paste_masks``: the
    convention's mask paster.
    """

    def __init__(self, *, min_size: int, max_size: int, image_mean: list[float], image_std: list[float],
                 size_divisible: int, geometry: BoxGeometry, single_scale: bool, paste_masks: MaskPaster) -> None:
        super().__init__(min_size, max_size, image_mean, image_std, size_divisible=size_divisible)
        self.geometry = geometry
        self.single_scale = single_scale
        self.paste_masks = paste_masks

    def scale_factors(self, original: tuple[int, int], resized: tuple[int, int]) -> tuple[float, float]:
        """(x factor, y factor) from original to resized pixels."""
        if self.single_scale:
            scale = rescale_factor(original, self.min_size[-1], self.max_size)
            return scale, scale
        return resized[1] / original[1], resized[0] / original[0]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        h, w = image.shape[-2:]
        size = rescaled_size((h, w), self.min_size[-1], self.max_size)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is None:
            return image, None
        sx, sy = self.scale_factors((h, w), size)
        offset = self.geometry.pixel_offset
        boxes = target["boxes"] - target["boxes"].new_tensor([0.0, 0.0, offset, offset])  # [G, 4] this geometry
        boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
        target = {**target, "boxes": self.geometry.clip(boxes, size) if offset else boxes}
        if "masks" in target:  # [G, h, w] uint8
            target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size, mode="nearest")[:, 0].byte()
        return image, target

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        image_list, targets = super().forward(images, targets)
        if targets is not None:
            height, width = image_list.tensors.shape[-2:]
            for t in targets:  # copies made by GeneralizedRCNNTransform.forward
                if "masks" in t:
                    t["masks"] = F.pad(t["masks"], (0, width - t["masks"].shape[-1], 0, height - t["masks"].shape[-2]))
        return image_list, targets

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        for pred, resized, original in zip(result, image_shapes, original_image_sizes):
            sx, sy = self.scale_factors(original, resized)
            boxes = pred["boxes"] / pred["boxes"].new_tensor([sx, sy, sx, sy])  # [K, 4] original pixels, unclipped
            if "masks" in pred:
                pred["masks"] = self.paste_masks(pred["masks"], boxes, original)  # [K, 1, H0, W0]
            pred["boxes"] = self.geometry.continuous(boxes)
        return result

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mean={self.image_mean}, std={self.image_std}, min_size={self.min_size}, "
                f"max_size={self.max_size}, pixel_offset={self.geometry.pixel_offset}, "
                f"single_scale={self.single_scale}, paste_masks={self.paste_masks.__name__})")
