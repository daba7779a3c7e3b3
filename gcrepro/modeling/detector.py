"""The detector class: torchvision's ``MaskRCNN`` made from already-built parts.

torchvision's ``MaskRCNN.__init__`` builds its own RPN and RoI heads from keyword arguments; the
GCNet detectors need other RoI heads (cascade, upstream box loss) and RPN options, so this subclass
takes the four finished parts and skips that constructor. Everything else (forward, transform,
post-processing, state-dict layout ``backbone.* / rpn.* / roi_heads.*``) is torchvision's.
Build one with ``gcrepro.build_model``.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class GCNetDetector(MaskRCNN):
    """Mask R-CNN or Cascade Mask R-CNN (by its ``roi_heads``) on a ResNet/ResNeXt-FPN backbone.

    Train mode: ``model(images, targets) -> dict of losses``; eval mode: ``model(images) -> list of
    dict(boxes [K, 4] xyxy in input-image pixels, labels [K], scores [K], masks [K, 1, H, W] probs)``.
    ``gcrepro_config`` (``ModelConfig``) records what was built.
    """

    def __init__(self, *, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module,
                 transform: GeneralizedRCNNTransform, config=None) -> None:
        GeneralizedRCNN.__init__(self, backbone, rpn, roi_heads, transform)  # not MaskRCNN.__init__
        self.gcrepro_config = config
