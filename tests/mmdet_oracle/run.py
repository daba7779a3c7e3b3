"""Both codebases on one preprocessed batch: features, RPN proposals and final detections.

mmdetection: ``extract_feat`` -> ``rpn_head.predict(rescale=False)`` -> ``roi_head.predict(rescale=True)``,
exactly the calls of ``TwoStageDetector.predict``, with the intermediate results kept.
gcrepro: the same three stages of torchvision's ``GeneralizedRCNN.forward`` (backbone, rpn,
roi_heads, ``transform.postprocess``) on the SAME padded tensor, so the input transform is
bypassed; the RPN's scored proposals are read from its ``filter_proposals``.
Labels are reported 0-based over the 80 classes (gcrepro's label minus 1: background first).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmdet_oracle.images import Batch


@dataclass
class Outputs:
    """One image's results from one codebase."""

    features: list[Tensor]  # P2..P6, each [256, H/s, W/s] (s = 4..64)
    proposals: Tensor  # [P, 4] xyxy in resized-image pixels, by decreasing score
    proposal_scores: Tensor  # [P] objectness probabilities
    boxes: Tensor  # [K, 4] xyxy in original-image pixels
    scores: Tensor  # [K]
    labels: Tensor  # [K] int64, 0..79
    masks: Tensor  # [K, H0, W0] bool at the original resolution


def mmdet_features(model, batch: Batch) -> tuple[Tensor, ...]:
    """mmdetection's backbone + neck on ``batch``: P2..P6, each [1, 256, H/s, W/s]."""
    with torch.no_grad():
        return model.extract_feat(batch.inputs)


def mmdet_outputs(model, batch: Batch, features: tuple[Tensor, ...] | None = None) -> Outputs:
    """mmdetection's own detector (eval mode) on ``batch``; ``features``: its ``mmdet_features``
    if already computed (the heads then run on them)."""
    if features is None:
        features = mmdet_features(model, batch)
    with torch.no_grad():
        rpn = model.rpn_head.predict(features, batch.data_samples, rescale=False)
        proposals = rpn[0].bboxes.clone(), rpn[0].scores.clone()
        dets = model.roi_head.predict(features, rpn, batch.data_samples, rescale=True)[0]
    return Outputs(features=[f[0] for f in features], proposals=proposals[0], proposal_scores=proposals[1],
                   boxes=dets.bboxes, scores=dets.scores, labels=dets.labels.long(), masks=dets.masks.bool())


def gcrepro_outputs(model, batch: Batch, *, mask_threshold: float) -> Outputs:
    """gcrepro's detector (eval mode) on ``batch``'s tensor; masks binarised at ``mask_threshold``
    (mmdetection's ``mask_thr_binary``, ``>=``) unless the model already returns booleans."""
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(batch.inputs, [batch.image_size])
    rpn = model.rpn
    captured: list = []
    filter_proposals = rpn.filter_proposals

    def capture(*args, **kwargs):
        boxes, scores = filter_proposals(*args, **kwargs)
        captured.append((boxes[0].clone(), scores[0].clone()))
        return boxes, scores

    rpn.filter_proposals = capture  # instance attribute: shadows the method for this call only
    try:
        with torch.no_grad():
            features = model.backbone(batch.inputs)  # {"0".."3", "pool"}: [1, 256, H/s, W/s]
            proposals, _ = rpn(images, features)
            detections, _ = model.roi_heads(features, proposals, images.image_sizes)
            det = model.transform.postprocess(detections, images.image_sizes, [batch.original_size])[0]
    finally:
        del rpn.filter_proposals
    if len(captured) != 1:
        raise RuntimeError(f"gcrepro rpn: expected one filter_proposals call, saw {len(captured)}")
    masks = det["masks"][:, 0]  # [K, H0, W0]
    masks = masks if masks.dtype == torch.bool else masks >= mask_threshold
    return Outputs(features=[f[0] for f in features.values()], proposals=captured[0][0],
                   proposal_scores=captured[0][1], boxes=det["boxes"], scores=det["scores"],
                   labels=det["labels"] - 1, masks=masks)
