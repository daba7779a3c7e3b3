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

The box geometry (IoU, NMS, clipping: :class:`~gcrepro.modeling.geometry.BoxGeometry`), the box
coder and the small-box rules come from the detector's convention (``gcrepro.modeling.conventions``);
with the torchvision convention's parts every step below is torchvision's.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork

from gcrepro.modeling.geometry import BoxGeometry, BoxSizeFilter
from gcrepro.modeling.masks import MaskTargets, mask_loss
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


def detect_boxes(class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                 image_shapes: list[tuple[int, int]], *, box_coder: BoxCoder, geometry: BoxGeometry,
                 score_thresh: float, nms_thresh: float, detections_per_img: int,
                 size_filter: BoxSizeFilter | None) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Class logits [R, K] and per-class deltas [R, 4K] of all images -> per image (boxes [k, 4],
    scores [k], labels [k]), at most ``detections_per_img`` by decreasing score.

    torchvision's ``RoIHeads.postprocess_detections`` with the convention's clipping, small-box rule
    and NMS geometry: decode, clip to the image, drop background (class 0), keep scores
    ``> score_thresh``, apply ``size_filter`` (torchvision: w, h >= 1e-2; mmdetection: none), NMS per
    class. mmdetection's ``multiclass_nms`` is the same sequence.
    """
    num_classes = class_logits.shape[-1]
    counts = [len(p) for p in proposals]
    pred_boxes = box_coder.decode(box_regression, proposals)  # [R, K, 4]
    pred_scores = F.softmax(class_logits, -1)  # [R, K]
    all_boxes, all_scores, all_labels = [], [], []
    for boxes, scores, shape in zip(pred_boxes.split(counts, 0), pred_scores.split(counts, 0), image_shapes):
        boxes = geometry.clip(boxes, shape)
        labels = torch.arange(num_classes, device=class_logits.device).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if size_filter is not None:
            keep = size_filter(boxes)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = geometry.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels


class MaskRCNNRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` (boxes + masks) with the box-head smooth-L1 beta and the convention's
    geometry as arguments.

    Sampling (``select_training_samples``) and mask inference are torchvision's own, matching with
    ``geometry.iou`` and encoding with ``box_coder``; post-processing is :func:`detect_boxes`; the
    mask loss takes the convention's ``mask_targets``. The box loss takes ``smooth_l1_beta``
    (upstream 1.0; torchvision 1/9). With the torchvision convention's parts this is
    ``torchvision.models.detection.roi_heads`` exactly. Keypoint branches are not supported.
    """

    def __init__(self, *, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module,
                 fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int,
                 positive_fraction: float, box_coder: BoxCoder, score_thresh: float, nms_thresh: float,
                 detections_per_img: int, smooth_l1_beta: float, geometry: BoxGeometry,
                 detection_size_filter: BoxSizeFilter | None, mask_targets: MaskTargets) -> None:
        super().__init__(
            box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
            positive_fraction, box_coder.weights, score_thresh, nms_thresh, detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
        )
        self.box_coder = box_coder
        self.box_similarity = geometry.iou
        self.geometry = geometry
        self.detection_size_filter = detection_size_filter
        self.mask_targets = mask_targets
        self.smooth_l1_beta = smooth_l1_beta

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return detect_boxes(class_logits, box_regression, proposals, image_shapes, box_coder=self.box_coder,
                            geometry=self.geometry, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                            detections_per_img=self.detections_per_img, size_filter=self.detection_size_filter)

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
        loss_mask = mask_loss(mask_logits, pos_boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
                              pos_matched, targets_fn=self.mask_targets)
        return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}


class UpstreamRegionProposalNetwork(RegionProposalNetwork):
    """torchvision ``RegionProposalNetwork`` with upstream's anchor-target rules as options and the
    convention's geometry.

    ``allowed_border``: anchors reaching more than this many pixels outside the (resized, unpadded)
    image (``x1 >= -b``, ``x2 < w + b``, as v1 and mmdetection's ``anchor_inside_flags``) get label
    -1 (ignored), and matching runs over the inside anchors only (0 = upstream, None = torchvision:
    all anchors).
    ``min_pos_iou``: a gt box's highest-IoU anchors become positives only when that IoU is at least
    this (upstream 0.3; None = torchvision: always).
    ``geometry`` matches (IoU), clips and suppresses (NMS per level); ``box_coder`` decodes and
    encodes; ``proposal_size_filter`` drops small proposals after clipping (torchvision: w, h >= 1e-3;
    mmdetection 2.x/3.x: w, h > 0; v1 with ``min_bbox_size=0``: None, no filter). mmdetection's
    per-level top ``nms_pre``, NMS per level and top ``max_per_img`` overall is torchvision's
    sequence; v1 keeps ``nms_post`` per level before its overall top ``max_num``, the same boxes
    when the two are equal (every GCNet config).
    """

    def __init__(self, *, allowed_border: float | None, min_pos_iou: float | None, geometry: BoxGeometry,
                 box_coder: BoxCoder, proposal_size_filter: BoxSizeFilter | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.allowed_border = allowed_border
        self.min_pos_iou = min_pos_iou
        self.geometry = geometry
        self.box_coder = box_coder
        self.box_similarity = geometry.iou
        self.proposal_size_filter = proposal_size_filter
        self._image_sizes: list[tuple[int, int]] | None = None

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Decoded proposals [N, A, 4] and objectness logits -> per image (boxes [p, 4], scores [p])
        by decreasing score: top ``pre_nms_top_n`` per level, clip, size filter, score threshold,
        NMS per level, top ``post_nms_top_n``."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)  # [N, A]
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)]).reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)  # [N, a]
        batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
        scores_all = torch.sigmoid(objectness[batch_idx, top_n_idx])
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape in zip(proposals[batch_idx, top_n_idx], scores_all,
                                             levels[batch_idx, top_n_idx], image_shapes):
            boxes = self.geometry.clip(boxes, shape)
            if self.proposal_size_filter is not None:
                keep = self.proposal_size_filter(boxes)
                boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = self.geometry.batched_nms(boxes, scores, lvl, self.nms_thresh)[:self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

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
                          & (anchors_i[:, 2] < w + b) & (anchors_i[:, 3] < h + b))
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


def clip_and_split(boxes: Tensor, counts: list[int], image_shapes: list[tuple[int, int]],
                   geometry: BoxGeometry) -> list[Tensor]:
    """[R, 4] boxes of all images -> per-image boxes clipped to their image."""
    return [geometry.clip(b, s) for b, s in zip(boxes.split(counts, 0), image_shapes)]
