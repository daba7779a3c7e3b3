"""``ModelConfig``: every hyperparameter of one detector, as one frozen, typed record.

Each field is written out with its source (SPEC §2-3 and the upstream GCNet mmdetection-v1 configs,
e.g. ``configs/gcnet/r50/mask_rcnn_r50_fpn_1x.py``). Fields whose upstream value differs from
torchvision's say so. ``conventions`` picks whose box geometry the detector reproduces (paper =
mmdetection v1, mmdet = mmdetection 2.x/3.x, torchvision; ``gcrepro.modeling.conventions``);
``CONVENTION_PRESETS`` adds the field values that codebase uses where they differ from the paper's
(``TORCHVISION_CONVENTIONS``: with it, row 1 equals
``torchvision.models.detection.maskrcnn_resnet50_fpn``). ``entry_settings`` is what a table row decides.

No torch import here: the command line resolves configs before it imports torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gcrepro.entries import Entry

HEAD_KINDS = ("2fc", "4conv1fc")
BACKBONE_NORMS = ("fixbn", "syncbn", "bn")
CONVENTION_NAMES = ("paper", "mmdet", "torchvision")


@dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter of one detector. Defaults = row 1 (R50-FPN Mask R-CNN, fixBN, 2fc) at paper scale."""

    # --- backbone (SPEC §2; the row's columns) ---
    depth: int = 50  # 50 | 101
    groups: int = 1  # ResNeXt-101 32x4d: 32
    width_per_group: int = 64  # ResNeXt-101 32x4d: 4
    base_width: int = 64  # stem width; every ResNet width scales with it (paper 64)
    norm: str = "fixbn"  # backbone norm: "fixbn" (frozen stats) | "syncbn" | "bn"
    frozen_stages: int = 1  # stem + layer1 frozen (upstream frozen_stages=1)
    stage_with_gcb: tuple[bool, bool, bool, bool] = (False, False, False, False)  # GC rows: c3-c5 (F, T, T, T)
    gc_ratio: float | None = None  # 1/16 (r16) | 1/4 (r4) | None (no GC)
    stage_with_dcn: tuple[bool, bool, bool, bool] = (False, False, False, False)  # DCN rows: c3-c5 (F, T, T, T)
    gc_impl: str = "auto"  # ContextBlock implementation: auto | reference | fused
    # bn3 weight 0 in every Bottleneck of the trainable stages, so each residual block starts as the identity
    # (Goyal et al. 2017; torchvision zero_init_residual). Not the paper's (its backbone starts from ImageNet);
    # the toy profile, trained from scratch, needs it: with fixBN's identity statistics the random R101 trunk
    # otherwise reaches activations ~5e4 and its RPN degenerates.
    zero_init_residual: bool = False
    # --- detector kind and heads ---
    cascade: bool = False  # Cascade Mask R-CNN (rows 25-30)
    head: str = "2fc"  # box head: "2fc" | "4conv1fc"
    head_norm: str | None = None  # norm of FPN convs, 4conv1fc box-head convs and mask-head convs (rows 13-15: "syncbn")
    num_classes: int = 81  # INCLUDING background (COCO 80 + 1; upstream num_classes=81)
    # whose box geometry: paper (mmdetection v1, upstream) | mmdet (2.x/3.x) | torchvision; anchors, box coder,
    # IoU/NMS, RoIAlign, resize, mask paste and mask targets (gcrepro.modeling.conventions)
    conventions: str = "paper"
    # --- input transform (torchvision GeneralizedRCNNTransform; SPEC §4, upstream img_scale=(1333, 800)) ---
    min_size: int = 800  # shorter side after keep-ratio resize
    max_size: int = 1333  # longer side cap
    size_divisible: int = 32  # pad to a multiple of 32 (upstream size_divisor=32)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet RGB mean (= 123.675, 116.28, 103.53 / 255)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # ImageNet RGB std (= 58.395, 57.12, 57.375 / 255)
    # --- FPN (P2-P6; P6 = max-pool stride 2 of P5, torchvision LastLevelMaxPool) ---
    fpn_channels: int = 256  # upstream neck out_channels=256
    # --- RPN (upstream rpn_head / train_cfg.rpn / rpn_proposal / test_cfg.rpn) ---
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # anchor_scales=[8] x strides 4, 8, 16, 32, 64
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor_ratios
    rpn_pre_nms_top_n_train: int = 2000  # rpn_proposal.nms_pre (per level)
    rpn_post_nms_top_n_train: int = 2000  # rpn_proposal.max_num
    rpn_pre_nms_top_n_test: int = 1000  # test_cfg.rpn.nms_pre (per level)
    rpn_post_nms_top_n_test: int = 1000  # test_cfg.rpn.max_num
    rpn_nms_thresh: float = 0.7  # nms_thr
    rpn_fg_iou_thresh: float = 0.7  # assigner pos_iou_thr
    rpn_bg_iou_thresh: float = 0.3  # assigner neg_iou_thr
    rpn_min_pos_iou: float | None = 0.3  # assigner min_pos_iou (torchvision: None = no floor)
    rpn_allowed_border: float | None = 0.0  # train_cfg.rpn.allowed_border (torchvision: None = all anchors)
    rpn_batch_size_per_image: int = 256  # sampler num
    rpn_positive_fraction: float = 0.5  # sampler pos_fraction
    rpn_score_thresh: float = 0.0  # no objectness floor (min_bbox_size=0)
    # (RPN loss: sigmoid CE + smooth L1 beta 1/9: upstream = torchvision, hard-coded there)
    # --- RoI heads (upstream bbox_roi_extractor / bbox_head / mask_head / train_cfg.rcnn / test_cfg.rcnn) ---
    box_roi_size: int = 7  # RoIAlign out_size=7
    mask_roi_size: int = 14  # RoIAlign out_size=14 (masks 28x28 after the 2x deconv)
    roi_sampling_ratio: int = 2  # RoIAlign sample_num=2
    box_fg_iou_thresh: float = 0.5  # rcnn assigner pos_iou_thr (Mask R-CNN; cascade: cascade_iou_thresholds)
    box_bg_iou_thresh: float = 0.5  # rcnn assigner neg_iou_thr
    box_batch_size_per_image: int = 512  # rcnn sampler num
    box_positive_fraction: float = 0.25  # rcnn sampler pos_fraction (gt boxes added as proposals)
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # 1 / target_stds [.1, .1, .2, .2]
    box_smooth_l1_beta: float = 1.0  # upstream SmoothL1Loss(beta=1.0); torchvision fastrcnn_loss: 1/9
    box_fc_dim: int = 1024  # fc_out_channels (2fc: fc6, fc7; 4conv1fc: the one fc)
    box_conv_dim: int = 256  # 4conv1fc conv_out_channels
    box_num_convs: int = 4  # 4conv1fc num_shared_convs
    mask_conv_dim: int = 256  # FCNMaskHead conv_out_channels (and the deconv)
    mask_num_convs: int = 4  # FCNMaskHead num_convs
    box_score_thresh: float = 0.05  # test_cfg.rcnn.score_thr
    box_nms_thresh: float = 0.5  # test_cfg.rcnn.nms iou_thr (per class)
    box_detections_per_img: int = 100  # test_cfg.rcnn.max_per_img
    mask_threshold: float = 0.5  # test_cfg.rcnn.mask_thr_binary (the model returns probabilities; evaluation binarises)
    # --- cascade (upstream configs/gcnet/x101/cascade/*.py) ---
    cascade_iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)  # train_cfg.rcnn[s].assigner pos/neg/min_pos_iou
    cascade_bbox_reg_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0),  # target_stds [.1, .1, .2, .2]
        (20.0, 20.0, 10.0, 10.0),  # [.05, .05, .1, .1]
        (1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067),  # [.033, .033, .067, .067] (not 30, 15: detectron2's rounding)
    )
    cascade_stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)  # train_cfg.stage_loss_weights
    cascade_score_average: str = "logits"  # upstream averages raw cls_score over stages, then softmax; or "probs"

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"ModelConfig {key}={getattr(self, key)!r}: expected {expected}")

        if self.depth not in (50, 101):
            raise bad("depth", "50 or 101")
        if self.norm not in BACKBONE_NORMS:
            raise bad("norm", f"one of {BACKBONE_NORMS}")
        if self.head not in HEAD_KINDS:
            raise bad("head", f"one of {HEAD_KINDS}")
        if self.head_norm not in (None, *BACKBONE_NORMS):
            raise bad("head_norm", f"None or one of {BACKBONE_NORMS}")
        if self.num_classes < 2:
            raise bad("num_classes", "at least 2 (classes + background)")
        if any(self.stage_with_gcb) and not (self.gc_ratio and self.gc_ratio > 0):
            raise bad("gc_ratio", "a positive ratio (1/16, 1/4) when stage_with_gcb has a True stage")
        if len(self.anchor_sizes) != 5:
            raise bad("anchor_sizes", "5 sizes, one per FPN level P2-P6")
        n = len(self.cascade_iou_thresholds)
        if len(self.cascade_bbox_reg_weights) != n or len(self.cascade_stage_loss_weights) != n:
            raise ValueError(
                f"ModelConfig cascade_iou_thresholds, cascade_bbox_reg_weights, cascade_stage_loss_weights need "
                f"one item per stage; got {n}, {len(self.cascade_bbox_reg_weights)}, "
                f"{len(self.cascade_stage_loss_weights)}")
        if self.cascade_score_average not in ("logits", "probs"):
            raise bad("cascade_score_average", "'logits' or 'probs'")
        if self.gc_impl not in ("auto", "reference", "fused"):
            raise bad("gc_impl", "one of auto|reference|fused")
        if self.conventions not in CONVENTION_NAMES:
            raise bad("conventions", "one of " + "|".join(CONVENTION_NAMES))


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ModelConfig))

# ``conventions=X`` plus the field values codebase X uses where they differ from the paper's. The field
# values are not implied by ``conventions`` alone: a ModelConfig records every value its model runs with,
# and these are hyperparameters one may mix (e.g. torchvision's geometry with upstream's loss).
# mmdetection 3.x's training values differ between its Mask R-CNN and Cascade configs (RPN L1 loss vs
# smooth L1 1/9, allowed_border -1 vs 0, 1000 vs 2000 train proposals, box L1 vs smooth L1 1.0), so its
# preset holds only the test-time value.
CONVENTION_PRESETS: dict[str, dict] = {
    "paper": dict(conventions="paper"),
    "mmdet": dict(conventions="mmdet", roi_sampling_ratio=0),  # mmcv RoIAlign sampling_ratio=0 (adaptive)
    "torchvision": dict(conventions="torchvision", box_smooth_l1_beta=1.0 / 9.0, rpn_allowed_border=None,
                        rpn_min_pos_iou=None),
}
# with these, row 1 is torchvision's maskrcnn_resnet50_fpn, training included
TORCHVISION_CONVENTIONS: dict = CONVENTION_PRESETS["torchvision"]



def entry_settings(entry: Entry) -> dict:
    """The ModelConfig fields a table row decides."""
    c3_c5 = (False, True, True, True)  # SPEC §1-2: GC and DCN in layer2-4
    none = (False, False, False, False)
    return dict(
        depth=entry.depth, groups=entry.groups, width_per_group=entry.width_per_group, norm=entry.norm,
        stage_with_gcb=c3_c5 if entry.gc else none, gc_ratio=entry.gc_ratio,
        stage_with_dcn=c3_c5 if entry.dcn else none, cascade=entry.cascade, head=entry.head,
        head_norm="syncbn" if entry.head == "4conv1fc" else None,  # "4conv1fc (SyncBN)": FPN + heads too
    )


