"""THE one place where a table row becomes modules.

    entry (gcrepro.entries) + Profile ("paper" | "toy") + overrides  ->  ModelConfig  ->  GCNetDetector

``ModelConfig`` holds every hyperparameter of the detector, written out with its source (SPEC §2-3
and the upstream GCNet mmdetection-v1 configs, e.g. ``configs/gcnet/r50/mask_rcnn_r50_fpn_1x.py``).
Fields whose upstream value differs from torchvision's say so; ``TORCHVISION_CONVENTIONS`` holds
torchvision's values, with which row 1 equals ``torchvision.models.detection.maskrcnn_resnet50_fpn``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from torch import nn

from gcrepro.entries import Entry, get_entry

HEAD_KINDS = ("2fc", "4conv1fc")
BACKBONE_NORMS = ("fixbn", "syncbn", "bn")


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
        (30.0, 30.0, 15.0, 15.0),  # [.033, .033, .067, .067]
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

    def to_dict(self) -> dict:
        """Every field by name (``json.dump`` writes the tuples as lists; ``from_dict`` reads them back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of ``to_dict`` (e.g. from a checkpoint or a JSON file); unknown keys raise."""
        unknown = sorted(set(values) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; allowed keys: {', '.join(FIELD_NAMES)}")
        return cls(**{k: _coerce(k, v) for k, v in values.items()})


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ModelConfig))

# torchvision's conventions where upstream differs; with these, row 1 is maskrcnn_resnet50_fpn.
TORCHVISION_CONVENTIONS: dict = dict(box_smooth_l1_beta=1.0 / 9.0, rpn_allowed_border=None, rpn_min_pos_iou=None)


@dataclass(frozen=True)
class Profile:
    """What a profile changes from the paper's model: input scale, widths and (from-scratch) init; never the structure."""

    name: str
    description: str
    min_size: int = 800
    max_size: int = 1333
    base_width: int = 64  # ResNet stem width (every stage scales with it)
    fpn_channels: int = 256
    box_fc_dim: int = 1024
    box_conv_dim: int = 256
    mask_conv_dim: int = 256
    zero_init_residual: bool = False  # from-scratch init (see ModelConfig)

    def settings(self) -> dict:
        """The ModelConfig fields this profile sets."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "description")}

    def changes(self) -> dict[str, dict]:
        """``{field: {"paper": value, "profile": value}}`` for every field that differs from the paper."""
        paper = PROFILES["paper"].settings()
        return {k: {"paper": paper[k], "profile": v} for k, v in self.settings().items() if v != paper[k]}


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", "the paper's model: inputs resized to (800, 1333), full widths"),
    "toy": Profile(
        "toy",
        "same structure for a laptop CPU: inputs resized to (160, 256), backbone width /4 "
        "(base 16), FPN 64, box fc 256, head convs 64; trained from scratch, so residual blocks start "
        "as the identity (zero_init_residual)",
        min_size=160, max_size=256, base_width=16, fpn_channels=64, box_fc_dim=256, box_conv_dim=64,
        mask_conv_dim=64, zero_init_residual=True,
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[profile]


def _coerce(key: str, value):
    """Lists (from YAML/JSON/CLI) -> tuples for tuple fields, so configs stay hashable and comparable."""
    hint = typing.get_type_hints(ModelConfig)[key]
    if isinstance(value, list) and "tuple" in str(hint):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


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


def model_config(name_or_row: str | int | Entry, *, num_classes: int = 81, profile: str | Profile = "paper",
                 gc_impl: str = "auto", **overrides) -> ModelConfig:
    """The ModelConfig of a table row: row settings, then the profile, then ``overrides``."""
    unknown = sorted(set(overrides) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown model override(s) {unknown}; allowed keys: {', '.join(FIELD_NAMES)}")
    entry = get_entry(name_or_row)
    values = {**entry_settings(entry), **get_profile(profile).settings(), "num_classes": num_classes,
              "gc_impl": gc_impl}
    values.update({k: _coerce(k, v) for k, v in overrides.items()})
    return ModelConfig(**values)


def build_detector(config: ModelConfig, *, entry: Entry | None = None, profile: Profile | None = None,
                   pretrained_backbone: str | None = None) -> nn.Module:
    """Assemble the detector a ModelConfig describes from torchvision parts."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from gcrepro.modeling.backbone import build_resnet
    from gcrepro.modeling.cascade import CascadeRoIHeads
    from gcrepro.modeling.detector import GCNetDetector
    from gcrepro.modeling.heads import (
        MaskRCNNRoIHeads, UpstreamRegionProposalNetwork, build_box_head, build_box_predictor, build_mask_head,
        build_mask_predictor, norm_layer,
    )

    c = config
    if pretrained_backbone is not None and c.base_width != 64:
        raise ValueError(
            f"pretrained_backbone={pretrained_backbone!r} needs the paper's backbone width (base_width 64), but this "
            f"config has base_width={c.base_width} (the toy profile narrows the backbone): use profile='paper' or "
            "no pretrained backbone")
    if pretrained_backbone is not None and c.zero_init_residual:
        raise ValueError(f"pretrained_backbone={pretrained_backbone!r} with zero_init_residual=True would zero "
                         "pretrained bn3 weights: set zero_init_residual=False")
    resnet = build_resnet(
        depth=c.depth, groups=c.groups, width_per_group=c.width_per_group, norm=c.norm,
        stage_with_gcb=c.stage_with_gcb, gcb_ratio=c.gc_ratio or 0.0, stage_with_dcn=c.stage_with_dcn,
        frozen_stages=c.frozen_stages, base_width=c.base_width, gc_impl=c.gc_impl, pretrained=pretrained_backbone,
    )
    if c.zero_init_residual:
        for stage in range(max(c.frozen_stages, 0) + 1, 5):  # trainable stages only
            for block in getattr(resnet, f"layer{stage}"):
                nn.init.zeros_(block.bn3.weight)
    backbone = BackboneWithFPN(
        resnet, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},  # C2-C5
        in_channels_list=list(resnet.out_channels_list), out_channels=c.fpn_channels,
        extra_blocks=LastLevelMaxPool(),  # P6 = max_pool2d(P5, 1, stride 2), upstream num_outs=5
        norm_layer=norm_layer(c.head_norm),  # rows 13-15: SyncBN in FPN convs, no conv bias
    )
    anchor_generator = AnchorGenerator(
        sizes=tuple((s,) for s in c.anchor_sizes), aspect_ratios=(tuple(c.anchor_ratios),) * len(c.anchor_sizes))
    rpn = UpstreamRegionProposalNetwork(
        anchor_generator=anchor_generator,
        head=RPNHead(c.fpn_channels, anchor_generator.num_anchors_per_location()[0]),  # plain 3x3 conv + 1x1s
        fg_iou_thresh=c.rpn_fg_iou_thresh, bg_iou_thresh=c.rpn_bg_iou_thresh,
        batch_size_per_image=c.rpn_batch_size_per_image, positive_fraction=c.rpn_positive_fraction,
        pre_nms_top_n=dict(training=c.rpn_pre_nms_top_n_train, testing=c.rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=c.rpn_post_nms_top_n_train, testing=c.rpn_post_nms_top_n_test),
        nms_thresh=c.rpn_nms_thresh, score_thresh=c.rpn_score_thresh,
        allowed_border=c.rpn_allowed_border, min_pos_iou=c.rpn_min_pos_iou,
    )
    levels = ["0", "1", "2", "3"]  # RoIs pool from P2-P5 (upstream featmap_strides=[4, 8, 16, 32])
    box_roi_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=c.box_roi_size,
                                      sampling_ratio=c.roi_sampling_ratio)
    mask_roi_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=c.mask_roi_size,
                                       sampling_ratio=c.roi_sampling_ratio)

    def box_head() -> nn.Module:
        return build_box_head(kind=c.head, in_channels=c.fpn_channels, roi_size=c.box_roi_size, fc_dim=c.box_fc_dim,
                              conv_dim=c.box_conv_dim, num_convs=c.box_num_convs, norm=c.head_norm)

    def mask_head() -> nn.Module:
        return build_mask_head(in_channels=c.fpn_channels, conv_dim=c.mask_conv_dim, num_convs=c.mask_num_convs,
                               norm=c.head_norm)

    def mask_predictor() -> nn.Module:
        return build_mask_predictor(conv_dim=c.mask_conv_dim, num_classes=c.num_classes)

    if c.cascade:
        stages = range(len(c.cascade_iou_thresholds))
        roi_heads: nn.Module = CascadeRoIHeads(
            box_roi_pool=box_roi_pool, mask_roi_pool=mask_roi_pool,
            box_heads=[box_head() for _ in stages],
            box_predictors=[build_box_predictor(in_channels=c.box_fc_dim, num_classes=c.num_classes,
                                                class_agnostic=True) for _ in stages],
            mask_heads=[mask_head() for _ in stages], mask_predictors=[mask_predictor() for _ in stages],
            stage_iou_thresholds=c.cascade_iou_thresholds, stage_bbox_reg_weights=c.cascade_bbox_reg_weights,
            stage_loss_weights=c.cascade_stage_loss_weights, batch_size_per_image=c.box_batch_size_per_image,
            positive_fraction=c.box_positive_fraction, score_thresh=c.box_score_thresh,
            nms_thresh=c.box_nms_thresh, detections_per_img=c.box_detections_per_img,
            smooth_l1_beta=c.box_smooth_l1_beta, score_average=c.cascade_score_average,
        )
    else:
        roi_heads = MaskRCNNRoIHeads(
            box_roi_pool=box_roi_pool, box_head=box_head(),
            box_predictor=build_box_predictor(in_channels=c.box_fc_dim, num_classes=c.num_classes,
                                              class_agnostic=False),
            mask_roi_pool=mask_roi_pool, mask_head=mask_head(), mask_predictor=mask_predictor(),
            fg_iou_thresh=c.box_fg_iou_thresh, bg_iou_thresh=c.box_bg_iou_thresh,
            batch_size_per_image=c.box_batch_size_per_image, positive_fraction=c.box_positive_fraction,
            bbox_reg_weights=c.bbox_reg_weights, score_thresh=c.box_score_thresh, nms_thresh=c.box_nms_thresh,
            detections_per_img=c.box_detections_per_img, smooth_l1_beta=c.box_smooth_l1_beta,
        )
    transform = GeneralizedRCNNTransform(c.min_size, c.max_size, list(c.image_mean), list(c.image_std),
                                         size_divisible=c.size_divisible)
    return GCNetDetector(backbone=backbone, rpn=rpn, roi_heads=roi_heads, transform=transform, entry=entry,
                         config=c, profile=profile)


def build_model(name_or_row: str | int | Entry, *, num_classes: int = 81, profile: str | Profile = "paper",
                gc_impl: str = "auto", pretrained_backbone: str | None = None, **overrides) -> nn.Module:
    """The detector of one table row (name like ``mask_rcnn_r50_fpn_gc_r16_1x`` or row number 1..30).

    ``num_classes`` includes background (COCO: 81). ``profile``: "paper" or "toy" (see ``PROFILES``).
    ``overrides``: ModelConfig fields (e.g. ``box_score_thresh=0.0``); unknown keys raise.
    ``pretrained_backbone``: ImageNet weights for the ResNet (torchvision weights name or a file).
    """
    entry = get_entry(name_or_row)
    prof = get_profile(profile)
    config = model_config(entry, num_classes=num_classes, profile=prof, gc_impl=gc_impl, **overrides)
    return build_detector(config, entry=entry, profile=prof, pretrained_backbone=pretrained_backbone)


__all__ = [
    "ModelConfig", "Profile", "PROFILES", "TORCHVISION_CONVENTIONS", "FIELD_NAMES", "get_profile", "entry_settings",
    "model_config", "build_detector", "build_model",
]
