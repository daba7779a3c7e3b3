"""The detector class: torchvision's ``MaskRCNN`` made from already-built parts.

torchvision's ``MaskRCNN.__init__`` builds its own RPN and RoI heads from keyword arguments; the
GCNet detectors need other RoI heads (cascade, upstream box loss) and RPN options, so this subclass
takes the four finished parts and skips that constructor. The parts keep torchvision's interfaces
and the state-dict layout ``backbone.* / rpn.* / roi_heads.*``.

``forward`` is torchvision's ``GeneralizedRCNN.forward`` in two steps, so that a caller holding an
already preprocessed batch (e.g. mmdetection's data preprocessor output, to compare both codebases
on the same tensor) can skip the transform::

    images = ImageList(tensors, image_sizes)  # [N, 3, H, W] normalised, padded; (h, w) before padding
    detections = model.eval().forward_preprocessed(images, original_image_sizes)

Each stage can also be called alone: ``model.backbone(images.tensors)``, ``model.rpn(images,
features)``, ``model.roi_heads(features, proposals, images.image_sizes)``,
``model.transform.postprocess(detections, images.image_sizes, original_image_sizes)``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform


def check_targets(targets: list[dict[str, Tensor]] | None) -> None:
    """Training targets: boxes [G, 4] with positive width and height (torchvision's checks)."""
    if targets is None:
        raise ValueError("training needs targets: a list of dicts with boxes, labels and masks")
    for i, t in enumerate(targets):
        boxes = t["boxes"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes']: expected a tensor of shape [G, 4], got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        degenerate = torch.where((boxes[:, 2:] <= boxes[:, :2]).any(dim=1))[0]
        if len(degenerate):
            raise ValueError(f"targets[{i}]['boxes'][{int(degenerate[0])}] = {boxes[degenerate[0]].tolist()}: "
                             "expected x2 > x1 and y2 > y1")


class GCNetDetector(MaskRCNN):
    """Mask R-CNN or Cascade Mask R-CNN (by its ``roi_heads``) on a ResNet/ResNeXt-FPN backbone.

    Train mode: ``model(images, targets) -> dict of losses``; eval mode: ``model(images) -> list of
    dict(boxes [K, 4] xyxy in input-image pixels, labels [K], scores [K], masks [K, 1, H, W] probs)``.
    Boxes in and out are continuous xyxy whatever the convention. ``gcrepro_config``
    (``ModelConfig``) records what was built.
    """

    def __init__(self, *, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module,
                 transform: GeneralizedRCNNTransform, config=None) -> None:
        GeneralizedRCNN.__init__(self, backbone, rpn, roi_heads, transform)  # not MaskRCNN.__init__
        self.gcrepro_config = config

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """images: list of [3, H_i, W_i] RGB in [0, 1]; targets (training): boxes, labels, masks per image."""
        if self.training:
            check_targets(targets)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        return self.forward_preprocessed(image_list, original_image_sizes, targets)

    def forward_preprocessed(self, images: ImageList, original_image_sizes: list[tuple[int, int]],
                             targets: list[dict[str, Tensor]] | None = None):
        """The model after its transform: backbone, RPN, RoI heads, ``transform.postprocess``.

        ``images``: the normalised, padded batch [N, 3, H, W] and each image's (h, w) before padding;
        ``original_image_sizes``: each image's (h, w) before resizing (detections are mapped back to
        it); ``targets`` (training) as ``self.transform`` returns them. Returns the losses (train)
        or the detections (eval), as ``forward``.
        """
        features = self.backbone(images.tensors)  # {"0".."3": P2-P5, "pool": P6}
        proposals, proposal_losses = self.rpn(images, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        detections = self.transform.postprocess(detections, images.image_sizes, original_image_sizes)
        if self.training:
            return {**detector_losses, **proposal_losses}
        return detections
