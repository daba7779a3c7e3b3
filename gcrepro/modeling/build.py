"""THE one place where configs become modules.

    ModelConfig (gcrepro.modeling.config)  ->  build_detector  ->  GCNetDetector

``build_model(entry, profile=..., **overrides)`` is the short way from a table row: it resolves the
ModelConfig with :func:`gcrepro.runspec.resolve_configs` (paper -> profile -> overrides), as training
does, then builds it. A trained run's ModelConfig comes from its RunSpec (``build_detector(spec.model)``).
"""
from __future__ import annotations

from torch import nn

from gcrepro.entries import Entry, get_entry
from gcrepro.modeling.config import CONVENTION_PRESETS, FIELD_NAMES, TORCHVISION_CONVENTIONS, ModelConfig


def model_config(name_or_row: str | int | Entry, *, num_classes: int = 81, profile: str = "paper",
                 gc_impl: str = "auto", **overrides) -> ModelConfig:
    """The ModelConfig of a table row: the paper's values, then the profile's, then ``overrides``
    (ModelConfig fields; a TrainConfig field or an unknown key raises ConfigError naming it)."""
    from gcrepro.engine.config import ConfigError
    from gcrepro.profiles import get_profile
    from gcrepro.runspec import MODEL_FIELDS, parse_overrides, resolve_configs

    typed = parse_overrides({**overrides, "gc_impl": gc_impl}, source="model override")
    not_model = sorted(set(typed) - set(MODEL_FIELDS))
    if not_model:
        raise ConfigError(f"model override {not_model[0]}: a training field, not a ModelConfig field; "
                          f"allowed keys: {', '.join(k for k in FIELD_NAMES if k != 'num_classes')}")
    try:
        prof = get_profile(profile)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model, _ = resolve_configs(get_entry(name_or_row), profile=prof, num_classes=num_classes, overrides=typed)
    return model


def build_detector(config: ModelConfig, *, pretrained_backbone: str | None = None) -> nn.Module:
    """Assemble the detector a ModelConfig describes from torchvision parts; the parts that depend on
    ``config.conventions`` come from :func:`gcrepro.modeling.conventions.convention_parts`."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from gcrepro.modeling.backbone import build_resnet
    from gcrepro.modeling.cascade import CascadeRoIHeads
    from gcrepro.modeling.conventions import convention_parts
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
    parts = convention_parts(c)
    anchor_generator = parts.anchor_generator
    rpn = UpstreamRegionProposalNetwork(
        anchor_generator=anchor_generator,
        head=RPNHead(c.fpn_channels, anchor_generator.num_anchors_per_location()[0]),  # plain 3x3 conv + 1x1s
        fg_iou_thresh=c.rpn_fg_iou_thresh, bg_iou_thresh=c.rpn_bg_iou_thresh,
        batch_size_per_image=c.rpn_batch_size_per_image, positive_fraction=c.rpn_positive_fraction,
        pre_nms_top_n=dict(training=c.rpn_pre_nms_top_n_train, testing=c.rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=c.rpn_post_nms_top_n_train, testing=c.rpn_post_nms_top_n_test),
        nms_thresh=c.rpn_nms_thresh, score_thresh=c.rpn_score_thresh,
        allowed_border=c.rpn_allowed_border, min_pos_iou=c.rpn_min_pos_iou, geometry=parts.geometry,
        box_coder=parts.box_coder((1.0, 1.0, 1.0, 1.0)),  # upstream rpn target_stds [1, 1, 1, 1]
        proposal_size_filter=parts.convention.proposal_size_filter,
    )
    geometry_args = dict(geometry=parts.geometry, detection_size_filter=parts.convention.detection_size_filter,
                         mask_targets=parts.convention.mask_targets)

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
            box_roi_pool=parts.box_roi_pool, mask_roi_pool=parts.mask_roi_pool,
            box_heads=[box_head() for _ in stages],
            box_predictors=[build_box_predictor(in_channels=c.box_fc_dim, num_classes=c.num_classes,
                                                class_agnostic=True) for _ in stages],
            mask_heads=[mask_head() for _ in stages], mask_predictors=[mask_predictor() for _ in stages],
            stage_iou_thresholds=c.cascade_iou_thresholds,
            stage_box_coders=[parts.box_coder(w) for w in c.cascade_bbox_reg_weights],
            stage_loss_weights=c.cascade_stage_loss_weights, batch_size_per_image=c.box_batch_size_per_image,
            positive_fraction=c.box_positive_fraction, score_thresh=c.box_score_thresh,
            nms_thresh=c.box_nms_thresh, detections_per_img=c.box_detections_per_img,
            smooth_l1_beta=c.box_smooth_l1_beta, score_average=c.cascade_score_average, **geometry_args,
        )
    else:
        roi_heads = MaskRCNNRoIHeads(
            box_roi_pool=parts.box_roi_pool, box_head=box_head(),
            box_predictor=build_box_predictor(in_channels=c.box_fc_dim, num_classes=c.num_classes,
                                              class_agnostic=False),
            mask_roi_pool=parts.mask_roi_pool, mask_head=mask_head(), mask_predictor=mask_predictor(),
            fg_iou_thresh=c.box_fg_iou_thresh, bg_iou_thresh=c.box_bg_iou_thresh,
            batch_size_per_image=c.box_batch_size_per_image, positive_fraction=c.box_positive_fraction,
            box_coder=parts.box_coder(c.bbox_reg_weights), score_thresh=c.box_score_thresh,
            nms_thresh=c.box_nms_thresh, detections_per_img=c.box_detections_per_img,
            smooth_l1_beta=c.box_smooth_l1_beta, **geometry_args,
        )
    return GCNetDetector(backbone=backbone, rpn=rpn, roi_heads=roi_heads, transform=parts.transform, config=c)


def build_model(name_or_row: str | int | Entry, *, num_classes: int = 81, profile: str = "paper",
                gc_impl: str = "auto", pretrained_backbone: str | None = None, **overrides) -> nn.Module:
    """The detector of one table row (name like ``mask_rcnn_r50_fpn_gc_r16_1x`` or row number 1..30).

    ``num_classes`` includes background (COCO: 81). ``profile``: "paper" or "toy" (``gcrepro.profiles``).
    ``overrides``: ModelConfig fields (e.g. ``box_score_thresh=0.0``); unknown keys raise.
    ``pretrained_backbone``: ImageNet weights for the ResNet (torchvision weights name or a file).
    """
    config = model_config(name_or_row, num_classes=num_classes, profile=profile, gc_impl=gc_impl, **overrides)
    return build_detector(config, pretrained_backbone=pretrained_backbone)


__all__ = ["ModelConfig", "CONVENTION_PRESETS", "TORCHVISION_CONVENTIONS", "FIELD_NAMES", "model_config",
           "build_detector", "build_model"]
