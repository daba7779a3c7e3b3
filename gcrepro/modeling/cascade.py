"""Cascade Mask R-CNN RoI heads (Cai & Vasconcelos 2018) as upstream GCNet runs them (SPEC §3).

Upstream: mmdetection v1 ``CascadeRCNN`` with the GCNet configs
``configs/gcnet/x101/cascade/*.py``:

- 3 stages, each with its own 2fc box head, class-agnostic box predictor and mask head; RoIAlign
  (7x7 boxes, 14x14 masks) shared.
- stage s samples 512 RoIs per image (25% positive; gt boxes added as proposals) with IoU
  thresholds 0.5 / 0.6 / 0.7 and encodes targets with box-coder stds [.1,.1,.2,.2],
  [.05,.05,.1,.1], [.033,.033,.067,.067] (torchvision weights 10,10,5,5 / 20,20,10,10 /
  30,30,15,15).
- losses of stage s (box classification, box regression, mask) are multiplied by 1 / 0.5 / 0.25.
- training refines the sampled RoIs of stage s with its deltas (no gradient, clipped to the image,
  sampled gt boxes dropped) to get the proposals of stage s+1.
- test: RPN proposals are refined stage by stage; the class logits of the 3 stages are averaged
  (upstream ``sum(ms_scores) / num_stages`` on the raw ``cls_score``, then softmax; option
  ``score_average="probs"`` averages softmax probabilities instead); boxes are stage 3's deltas
  applied to stage 3's input RoIs; then score threshold, per-class NMS and top-k as Mask R-CNN.
  Masks: every stage's mask head runs on the final boxes and their sigmoid probabilities are
  averaged (upstream ``merge_aug_masks`` over ``self.mask_head[i]``), then the detected class's
  channel is kept.

mmdetection 2.x/3.x (``mmdet/models/roi_heads/cascade_roi_head.py``: ``_refine_roi``, ``predict_mask``)
does the same at test time: raw ``cls_score`` averaged over the stages, boxes from the last stage's
deltas on its input RoIs, mean of the stages' sigmoid masks. Matching (IoU), clipping, NMS, the
stage box coders and the mask targets follow the detector's convention (``geometry``,
``box_coders``, ``mask_targets``; ``gcrepro.modeling.conventions``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads

from gcrepro.modeling.geometry import BoxGeometry, BoxSizeFilter
from gcrepro.modeling.heads import (
    check_target_types, clip_and_split, detect_boxes, fast_rcnn_loss, positive_proposals,
)
from gcrepro.modeling.masks import MaskTargets, mask_loss

SCORE_AVERAGES = ("logits", "probs")


class CascadeRoIHeads(RoIHeads):
    """Cascade box + mask heads; a torchvision ``RoIHeads`` so ``MaskRCNN`` and its transform use it.

    Stage modules live in ``box_heads[s]``, ``box_predictors[s]``, ``mask_heads[s]``,
    ``mask_predictors[s]``; the single-stage attributes ``box_head``, ``box_predictor``,
    ``mask_head``, ``mask_predictor`` of ``RoIHeads`` are None. ``stage_box_coders[s]`` encodes stage
    s's targets and refines its RoIs; ``self.box_coder`` is the last stage's. Training loss keys:
    ``loss_classifier_s{s}``, ``loss_box_reg_s{s}``, ``loss_mask_s{s}`` (already weighted).
    """

    def __init__(self, *, box_roi_pool: nn.Module, box_heads: list[nn.Module], box_predictors: list[nn.Module],
                 mask_roi_pool: nn.Module, mask_heads: list[nn.Module], mask_predictors: list[nn.Module],
                 stage_iou_thresholds: tuple[float, ...], stage_box_coders: list[BoxCoder],
                 stage_loss_weights: tuple[float, ...], batch_size_per_image: int, positive_fraction: float,
                 score_thresh: float, nms_thresh: float, detections_per_img: int, smooth_l1_beta: float,
                 geometry: BoxGeometry, detection_size_filter: BoxSizeFilter | None, mask_targets: MaskTargets,
                 score_average: str = "logits") -> None:
        n = len(stage_iou_thresholds)
        lengths = {len(box_heads), len(box_predictors), len(mask_heads), len(mask_predictors),
                   len(stage_box_coders), len(stage_loss_weights)}
        if lengths != {n}:
            raise ValueError(f"CascadeRoIHeads: every per-stage list needs {n} items (one per IoU threshold "
                             f"{stage_iou_thresholds}); got lengths {sorted(lengths)}")
        if score_average not in SCORE_AVERAGES:
            raise ValueError(f"CascadeRoIHeads score_average={score_average!r}: expected one of {SCORE_AVERAGES}")
        # RoIHeads keeps the sampler, the test-time settings and the LAST stage's matcher and coder.
        super().__init__(
            box_roi_pool, None, None, stage_iou_thresholds[-1], stage_iou_thresholds[-1], batch_size_per_image,
            positive_fraction, stage_box_coders[-1].weights, score_thresh, nms_thresh, detections_per_img,
            mask_roi_pool=mask_roi_pool,
        )
        self.box_coder = stage_box_coders[-1]
        self.box_similarity = geometry.iou
        self.geometry = geometry
        self.detection_size_filter = detection_size_filter
        self.mask_targets = mask_targets
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.mask_heads = nn.ModuleList(mask_heads)
        self.mask_predictors = nn.ModuleList(mask_predictors)
        # pos = neg = min_pos IoU threshold per stage (upstream MaxIoUAssigner), no low-quality matches
        self.stage_matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in stage_iou_thresholds]
        self.stage_box_coders = list(stage_box_coders)
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_average = score_average

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def has_mask(self) -> bool:
        return True

    def sample_stage(self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Add gt boxes, match at this stage's IoU, sample, encode with this stage's coder.

        Returns per image: sampled RoIs [r, 4], matched gt index [r], labels [r] (0 = background),
        regression targets [r, 4], and whether each RoI is a gt box [r] (bool).
        """
        matcher, coder = self.stage_matchers[stage], self.stage_box_coders[stage]
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        is_gt = [torch.cat([torch.zeros(len(p), dtype=torch.bool, device=p.device),
                            torch.ones(len(g), dtype=torch.bool, device=p.device)]) for p, g in zip(proposals, gt_boxes)]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = [], []
        for props, gts, gls in zip(proposals, gt_boxes, gt_labels):
            if gts.numel() == 0:  # background image
                matched_idxs.append(torch.zeros(len(props), dtype=torch.int64, device=props.device))
                labels.append(torch.zeros(len(props), dtype=torch.int64, device=props.device))
                continue
            m = matcher(self.geometry.iou(gts, props))  # [r]: gt index, -1 below threshold
            lab = gls[m.clamp(min=0)].to(torch.int64)
            lab[m == matcher.BELOW_LOW_THRESHOLD] = 0
            lab[m == matcher.BETWEEN_THRESHOLDS] = -1  # (empty: thresholds are equal)
            matched_idxs.append(m.clamp(min=0))
            labels.append(lab)
        sampled = self.subsample(labels)
        out_props, out_matched, out_labels, out_is_gt, matched_boxes = [], [], [], [], []
        for i, inds in enumerate(sampled):
            out_props.append(proposals[i][inds])
            out_matched.append(matched_idxs[i][inds])
            out_labels.append(labels[i][inds])
            out_is_gt.append(is_gt[i][inds])
            gts = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros((1, 4), dtype=dtype, device=inds.device)
            matched_boxes.append(gts[out_matched[-1]])
        regression_targets = coder.encode(matched_boxes, out_props)
        return out_props, out_matched, out_labels, regression_targets, out_is_gt

    def refine(self, stage: int, box_deltas: Tensor, proposals: list[Tensor],
               image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """Apply this stage's class-agnostic deltas [R, 4] to its RoIs; clipped, no gradient."""
        boxes = self.stage_box_coders[stage].decode(box_deltas.detach(), proposals)  # [R, 1, 4]
        return clip_and_split(boxes.reshape(-1, 4), [len(p) for p in proposals], image_shapes, self.geometry)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            check_target_types(targets)
            self.check_targets(targets)
        losses: dict[str, Tensor] = {}
        stage_logits: list[Tensor] = []
        box_deltas = torch.empty(0)
        for s in range(self.num_stages):
            if self.training:
                proposals, matched_idxs, labels, regression_targets, is_gt = self.sample_stage(s, proposals, targets)
            box_features = self.box_heads[s](self.box_roi_pool(features, proposals, image_shapes))  # [R, D]
            class_logits, box_deltas = self.box_predictors[s](box_features)  # [R, K], [R, 4]
            if self.training:
                w = self.stage_loss_weights[s]
                loss_cls, loss_box = fast_rcnn_loss(class_logits, box_deltas, labels, regression_targets,
                                                    smooth_l1_beta=self.smooth_l1_beta)
                pos_boxes, pos_matched = positive_proposals(proposals, matched_idxs, labels)
                mask_logits = self.mask_predictors[s](
                    self.mask_heads[s](self.mask_roi_pool(features, pos_boxes, image_shapes)))  # [P, K, 28, 28]
                loss_mask = mask_loss(mask_logits, pos_boxes, [t["masks"] for t in targets],
                                      [t["labels"] for t in targets], pos_matched, targets_fn=self.mask_targets)
                losses[f"loss_classifier_s{s}"] = w * loss_cls
                losses[f"loss_box_reg_s{s}"] = w * loss_box
                losses[f"loss_mask_s{s}"] = w * loss_mask
            else:
                stage_logits.append(class_logits)
            if s < self.num_stages - 1:
                refined = self.refine(s, box_deltas, proposals, image_shapes)
                # training: the sampled gt boxes are not carried to the next stage (upstream pos_is_gts)
                proposals = refined if not self.training else [r[~g] for r, g in zip(refined, is_gt)]
        if self.training:
            return [], losses
        return self.detect(features, stage_logits, box_deltas, proposals, image_shapes), {}

    def detect(self, features: dict[str, Tensor], stage_logits: list[Tensor], last_deltas: Tensor,
               last_rois: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Averaged scores + last-stage boxes -> NMS'd detections with stage-averaged masks."""
        if self.score_average == "logits":
            class_logits = torch.stack(stage_logits).mean(dim=0)  # [R, K]
        else:  # softmax(log(mean p)) = mean p
            class_logits = torch.stack([F.softmax(x, dim=-1) for x in stage_logits]).mean(dim=0).log()
        num_classes = class_logits.shape[-1]
        # class-agnostic deltas, repeated per class so torchvision's per-class post-processing applies
        boxes, scores, labels = detect_boxes(
            class_logits, last_deltas.repeat(1, num_classes), last_rois, image_shapes, box_coder=self.box_coder,
            geometry=self.geometry, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img, size_filter=self.detection_size_filter)
        mask_features = self.mask_roi_pool(features, boxes, image_shapes)  # [k, C, 14, 14]
        probs = torch.stack([self.mask_predictors[s](self.mask_heads[s](mask_features)).sigmoid()
                             for s in range(self.num_stages)]).mean(dim=0)  # [k, K, 28, 28]
        cls = torch.cat(labels)  # [k]
        masks = probs[torch.arange(len(cls), device=cls.device), cls][:, None]  # [k, 1, 28, 28]
        masks_per_image = masks.split([len(b) for b in boxes], dim=0)
        return [dict(boxes=b, labels=c, scores=s, masks=m)
                for b, c, s, m in zip(boxes, labels, scores, masks_per_image)]
