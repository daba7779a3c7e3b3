"""RPN and RoI heads of the GCNet detectors, assembled from torchvision parts (SPEC §3).

Where upstream GCNet (mmdetection v1) deliberately differs from torchvision, the difference is a
constructor argument whose torchvision value reproduces torchvision exactly:

- ``smooth_l1_beta`` of the box-head regression loss: upstream ``SmoothL1Loss(beta=1.0)`` in every
  GCNet config's ``bbox_head``; torchvision's ``fastrcnn_loss`` hard-codes ``beta=1/9``.
- RPN ``allowed_border``: upstream ``train_cfg.rpn.allowed_border=0`` ignores anchors that cross
  the image border when sampling RPN targets; torchvision uses every anchor (``None``).
- RPN ``min_pos_iou``: upstream ``MaxIoUAssigner(min_pos_iou=0.3)`` gives a ground-truth box its
  best anchors as extra positives only when their IoU is at least 0.3; torchvision always does
  (``None``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

from gcrepro.modeling.norm import make_norm

BOX_HEADS = ("2fc", "4conv1fc")


def norm_layer(kind: str | None):
    """``kind`` -> a ``norm_layer(num_features)`` callable for torchvision heads, or None (no norm)."""
    return None if kind is None else functools.partial(make_norm, kind)


def build_box_head(*, kind: str, in_channels: int, roi_size: int, fc_dim: int, conv_dim: int, num_convs: int,
                   norm: str | None) -> nn.Module:
    """Box head on [R, in_channels, roi_size, roi_size] RoI features -> [R, fc_dim].

    "2fc": torchvision ``TwoMLPHead`` (fc6, fc7; upstream ``SharedFCBBoxHead(num_fcs=2)``), no norm.
    "4conv1fc": ``num_convs`` shared 3x3 convs ``conv_dim`` wide with ``norm`` (no conv bias under a
    norm) + 1 fc ``fc_dim`` (upstream ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1)``).
    """
    if kind == "2fc":
        return TwoMLPHead(in_channels * roi_size**2, fc_dim)
    if kind == "4conv1fc":
        return FastRCNNConvFCHead((in_channels, roi_size, roi_size), [conv_dim] * num_convs, [fc_dim],
                                  norm_layer=norm_layer(norm))
    raise ValueError(f"box head {kind!r}: expected one of {BOX_HEADS}")


def build_mask_head(*, in_channels: int, conv_dim: int, num_convs: int, norm: str | None) -> nn.Module:
    """``num_convs`` 3x3 convs ``conv_dim`` wide (+ norm, no bias under a norm) + ReLU on [R, C, 14, 14]."""
    return MaskRCNNHeads(in_channels, [conv_dim] * num_convs, 1, norm_layer=norm_layer(norm))


def build_mask_predictor(*, conv_dim: int, num_classes: int) -> nn.Module:
    """2x2 stride-2 deconv + ReLU + 1x1 conv: [R, conv_dim, 14, 14] -> [R, num_classes, 28, 28] logits."""
    return MaskRCNNPredictor(conv_dim, conv_dim, num_classes)


class ClassAgnosticBoxPredictor(nn.Module):
    """``cls_score`` over ``num_classes`` (background included) and ONE box delta per RoI.

    [R, D] -> ([R, num_classes], [R, 4]); upstream ``reg_class_agnostic=True`` (cascade heads).
    Initialised like torchvision's ``FastRCNNPredictor`` (PyTorch's ``nn.Linear`` default).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)  # [R, D]
        return self.cls_score(x), self.bbox_pred(x)  # [R, K], [R, 4]


def build_box_predictor(*, in_channels: int, num_classes: int, class_agnostic: bool) -> nn.Module:
    if class_agnostic:
        return ClassAgnosticBoxPredictor(in_channels, num_classes)
    return FastRCNNPredictor(in_channels, num_classes)  # [R, K], [R, 4K]


def fast_rcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                   regression_targets: list[Tensor], *, smooth_l1_beta: float) -> tuple[Tensor, Tensor]:
    """Box-head classification and regression losses of the sampled RoIs.

    ``class_logits`` [R, K]; ``box_regression`` [R, 4K] (class-specific) or [R, 4] (class-agnostic);
    ``labels`` / ``regression_targets`` per image ([r_i], [r_i, 4]). Cross entropy over all sampled
    RoIs; smooth L1 on the positives' deltas (of their gt class when class-specific), summed and
    divided by the number of sampled RoIs (torchvision ``fastrcnn_loss`` = upstream ``avg_factor``).
    """
    labels_all = torch.cat(labels, dim=0)  # [R]
    targets = torch.cat(regression_targets, dim=0)  # [R, 4]
    loss_cls = F.cross_entropy(class_logits, labels_all)
    pos = torch.where(labels_all > 0)[0]  # [P]
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)  # [R, K or 1, 4]
    pos_deltas = deltas[pos, labels_all[pos]] if deltas.shape[1] > 1 else deltas[pos, 0]  # [P, 4]
    loss_box = F.smooth_l1_loss(pos_deltas, targets[pos], beta=smooth_l1_beta, reduction="sum")
    return loss_cls, loss_box / labels_all.numel()


def positive_proposals(proposals: list[Tensor], matched_idxs: list[Tensor],
                       labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per image: the sampled RoIs with a foreground label and their matched gt index (mask targets)."""
    pos = [torch.where(lab > 0)[0] for lab in labels]
    return [p[i] for p, i in zip(proposals, pos)], [m[i] for m, i in zip(matched_idxs, pos)]


def check_target_types(targets: list[dict[str, Tensor]] | None) -> None:
    if targets is None:
        raise ValueError("training needs targets: a list of dicts with boxes, labels and masks")
    for i, t in enumerate(targets):
        if not t["boxes"].is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be a float tensor, got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"targets[{i}]['labels'] must be int64, got {t['labels'].dtype}")


class MaskRCNNRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` (boxes + masks) with the box-head smooth-L1 beta as an argument.

    Sampling (``select_training_samples``), post-processing (``postprocess_detections``), mask
    loss and mask inference are torchvision's own; only the box loss takes ``smooth_l1_beta``
    (upstream 1.0; torchvision 1/9 reproduces ``torchvision.models.detection.roi_heads`` exactly).
    Keypoint branches are not supported.
    """

    def __init__(self, *, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module,
                 fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int,
                 positive_fraction: float, bbox_reg_weights: tuple[float, float, float, float],
                 score_thresh: float, nms_thresh: float, detections_per_img: int,
                 smooth_l1_beta: float) -> None:
        super().__init__(
            box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
            positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
        )
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            check_target_types(targets)
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_roi_pool(features, proposals, image_shapes)  # [R, C, 7, 7]
        box_features = self.box_head(box_features)  # [R, D]
        class_logits, box_regression = self.box_predictor(box_features)  # [R, K], [R, 4K]

        if not self.training:
            boxes, scores, classes = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
            masks = maskrcnn_inference(mask_logits, classes)  # per image [k, 1, 28, 28] probabilities
            return [dict(boxes=b, labels=c, scores=s, masks=m)
                    for b, c, s, m in zip(boxes, classes, scores, masks)], {}

        loss_cls, loss_box = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets,
                                            smooth_l1_beta=self.smooth_l1_beta)
        pos_boxes, pos_matched = positive_proposals(proposals, matched_idxs, labels)
        mask_features = self.mask_head(self.mask_roi_pool(features, pos_boxes, image_shapes))  # [P, 256, 14, 14]
        mask_logits = self.mask_predictor(mask_features)  # [P, K, 28, 28]
        loss_mask = maskrcnn_loss(mask_logits, pos_boxes, [t["masks"] for t in targets],
                                  [t["labels"] for t in targets], pos_matched)
        return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}


class UpstreamRegionProposalNetwork(RegionProposalNetwork):
    """torchvision ``RegionProposalNetwork`` with upstream's anchor-target rules as options.

    ``allowed_border``: anchors reaching more than this many pixels outside the (resized, unpadded)
    image get label -1 (ignored), and matching runs over the inside anchors only (upstream
    ``anchor_inside_flags``; 0 = upstream, None = torchvision: all anchors).
    ``min_pos_iou``: a gt box's highest-IoU anchors become positives only when that IoU is at least
    this (upstream 0.3; None = torchvision: always).
    """

    def __init__(self, *, allowed_border: float | None, min_pos_iou: float | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.allowed_border = allowed_border
        self.min_pos_iou = min_pos_iou
        self._image_sizes: list[tuple[int, int]] | None = None

    def forward(self, images, features, targets=None):
        self._image_sizes = images.image_sizes  # read by assign_targets_to_anchors
        try:
            return super().forward(images, features, targets)
        finally:
            self._image_sizes = None

    def assign_targets_to_anchors(self, anchors: list[Tensor],
                                  targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        # Under autocast the anchors arrive in bf16/fp16 (4-8 px steps at 800-1333 px): match in fp32.
        anchors = [a.float() for a in anchors]
        if self.allowed_border is None and self.min_pos_iou is None:
            return super().assign_targets_to_anchors(anchors, targets)
        if self._image_sizes is None:
            raise RuntimeError("assign_targets_to_anchors needs the image sizes: call the RPN's forward")
        labels, matched_gt_boxes = [], []
        for anchors_i, targets_i, (h, w) in zip(anchors, targets, self._image_sizes):
            gt = targets_i["boxes"]  # [G, 4]
            label = torch.full((anchors_i.shape[0],), -1.0, device=anchors_i.device)  # [A], -1 ignored
            matched = anchors_i.clone()  # [A, 4]; unmatched anchors get finite (zero) regression targets
            inside = torch.ones(anchors_i.shape[0], dtype=torch.bool, device=anchors_i.device)
            if self.allowed_border is not None:
                b = self.allowed_border
                inside = ((anchors_i[:, 0] >= -b) & (anchors_i[:, 1] >= -b)
                          & (anchors_i[:, 2] <= w + b) & (anchors_i[:, 3] <= h + b))
            idx = torch.where(inside)[0]  # [A_in]
            if gt.numel() == 0 or idx.numel() == 0:
                label[idx] = 0.0  # background image: every considered anchor is negative
            else:
                iou = self.box_similarity(gt, anchors_i[idx])  # [G, A_in]
                keep_gt = torch.arange(gt.shape[0], device=gt.device)
                if self.min_pos_iou is not None:
                    # a gt whose best IoU is below min_pos_iou has no positive anchor (all of its IoUs are
                    # below bg_iou_thresh too), so leaving it out changes nothing else.
                    keep_gt = torch.where(iou.max(dim=1).values >= self.min_pos_iou)[0]
                if keep_gt.numel() == 0:
                    label[idx] = 0.0
                else:
                    m = self.proposal_matcher(iou[keep_gt])  # [A_in]: index into keep_gt, -1 bg, -2 between
                    matched[idx] = gt[keep_gt[m.clamp(min=0)]]
                    lab = (m >= 0).to(torch.float32)
                    lab[m == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
                    label[idx] = lab
            labels.append(label)
            matched_gt_boxes.append(matched)
        return labels, matched_gt_boxes


def clip_and_split(boxes: Tensor, counts: list[int], image_shapes: list[tuple[int, int]]) -> list[Tensor]:
    """[R, 4] boxes of all images -> per-image boxes clipped to their image."""
    return [box_ops.clip_boxes_to_image(b, s) for b, s in zip(boxes.split(counts, 0), image_shapes)]
