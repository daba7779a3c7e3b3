"""mmdetection 2.x / 3.x detector checkpoints <-> gcrepro names (SPEC §6; checked against mmdetection 3.3.0).

    mmdetection 2.x / 3.x                           gcrepro
    backbone.{rest}                                 backbone.body.{rest}
    backbone.layerI.J.conv2.conv_offset             backbone.body.layerI.J.conv2_offset  (DCN)
    neck.lateral_convs.K.{conv,bn}                  backbone.fpn.inner_blocks.K.{0,1}
    neck.fpn_convs.K.{conv,bn}                      backbone.fpn.layer_blocks.K.{0,1}
    rpn_head.rpn_conv / rpn_cls / rpn_reg           rpn.head.conv.0.0 / cls_logits / bbox_pred
    roi_head.bbox_head.shared_fcs.0 / 1             roi_heads.box_head.fc6 / fc7             (2fc)
    roi_head.bbox_head.shared_convs.K.{conv,bn}     roi_heads.box_head.K.{0,1}               (4conv1fc)
    roi_head.bbox_head.shared_fcs.0                 roi_heads.box_head.{convs + 1}           (4conv1fc)
    roi_head.bbox_head.fc_cls / fc_reg              roi_heads.box_predictor.cls_score / bbox_pred
    roi_head.mask_head.convs.K.{conv,bn}            roi_heads.mask_head.K.{0,1}
    roi_head.mask_head.upsample / conv_logits       roi_heads.mask_predictor.conv5_mask / mask_fcn_logits
    roi_head.{bbox,mask}_head.S.*  (cascade)        roi_heads.{box,mask}_heads.S.*, roi_heads.{box,mask}_predictors.S.*

Class rows: mmdetection 2.x+ puts background LAST in ``fc_cls`` and keeps no background rows in a
class-specific ``fc_reg`` (4 (K-1) rows) or in ``conv_logits`` (K-1); gcrepro has background first
and K rows everywhere, so the background row moves to the front and zero rows are added for it (its
box deltas and mask are never read). The original GCNet code (``gcnet_v1``) uses the same table
without the ``roi_head.`` prefix and with the DCN offset conv beside ``conv2``.
"""
from __future__ import annotations

import re

from torch import Tensor

from gcrepro.convert.classes import (
    CLS_SCORE, add_background_rows, background_first_to_last, background_last_to_first, drop_background_rows,
    num_classes_of, rows_per_class,
)
from gcrepro.convert.errors import ConvertError
from gcrepro.convert.keymap import Mapped, Rule, apply_rules, rename

ROI_PREFIX = "roi_head."
DCN_OFFSET = "conv2.conv_offset"  # mmcv's DeformConv2dPack holds its offset conv inside conv2
SOURCE_BOX_CONV = re.compile(r"bbox_head\.(?:\d+\.)?shared_convs\.(\d+)\.conv\.weight\Z")
GCREPRO_BOX_CONV = re.compile(r"roi_heads\.box_heads?\.(?:\d+\.)?(\d+)\.0\.weight\Z")


def box_head_convs(keys, pattern: re.Pattern = SOURCE_BOX_CONV) -> int:
    """Shared 3x3 convs of the box head (0 for the 2fc head), from its keys."""
    found = [int(m.group(1)) for m in map(pattern.search, keys) if m]
    return max(found) + 1 if found else 0


def detector_rules(*, roi_prefix: str, dcn_offset: str, box_convs: int) -> list[Rule]:
    """The table above: mmdetection 2.x/3.x (``roi_prefix="roi_head."``, ``dcn_offset="conv2.conv_offset"``)
    or mmdetection v1 (``""``, ``"conv2_offset"``); ``box_convs``: 0 (2fc) or the 4conv1fc head's convs."""
    rules = [Rule(f"backbone.layer{{i}}.{{j}}.{dcn_offset}.{{p}}", "backbone.body.layer{i}.{j}.conv2_offset.{p}"),
             Rule("backbone.{rest}", "backbone.body.{rest}")]
    for source, target in (("lateral_convs", "inner_blocks"), ("fpn_convs", "layer_blocks")):
        rules += [Rule(f"neck.{source}.{{k}}.conv.{{p}}", f"backbone.fpn.{target}.{{k}}.0.{{p}}"),
                  Rule(f"neck.{source}.{{k}}.bn.{{p}}", f"backbone.fpn.{target}.{{k}}.1.{{p}}")]
    rules += [Rule("rpn_head.rpn_conv.{p}", "rpn.head.conv.0.0.{p}"),
              Rule("rpn_head.rpn_cls.{p}", "rpn.head.cls_logits.{p}"),
              Rule("rpn_head.rpn_reg.{p}", "rpn.head.bbox_pred.{p}")]
    for stage, plural in (("", ""), ("{s}.", "s.{s}")):  # Mask R-CNN, then the cascade's stages
        bbox, mask = f"{roi_prefix}bbox_head.{stage}", f"{roi_prefix}mask_head.{stage}"
        box, predictor = f"roi_heads.box_head{plural}", f"roi_heads.box_predictor{plural}"
        mask_head, mask_predictor = f"roi_heads.mask_head{plural}", f"roi_heads.mask_predictor{plural}"
        if box_convs:
            rules += [Rule(f"{bbox}shared_convs.{{k}}.conv.{{p}}", f"{box}.{{k}}.0.{{p}}"),
                      Rule(f"{bbox}shared_convs.{{k}}.bn.{{p}}", f"{box}.{{k}}.1.{{p}}"),
                      Rule(f"{bbox}shared_fcs.0.{{p}}", f"{box}.{box_convs + 1}.{{p}}")]  # after the Flatten
        else:
            rules += [Rule(f"{bbox}shared_fcs.0.{{p}}", f"{box}.fc6.{{p}}"),
                      Rule(f"{bbox}shared_fcs.1.{{p}}", f"{box}.fc7.{{p}}")]
        rules += [Rule(f"{bbox}fc_cls.{{p}}", f"{predictor}.cls_score.{{p}}"),
                  Rule(f"{bbox}fc_reg.{{p}}", f"{predictor}.bbox_pred.{{p}}"),
                  Rule(f"{mask}convs.{{k}}.conv.{{p}}", f"{mask_head}.{{k}}.0.{{p}}"),
                  Rule(f"{mask}convs.{{k}}.bn.{{p}}", f"{mask_head}.{{k}}.1.{{p}}"),
                  Rule(f"{mask}upsample.{{p}}", f"{mask_predictor}.conv5_mask.{{p}}"),
                  Rule(f"{mask}conv_logits.{{p}}", f"{mask_predictor}.mask_fcn_logits.{{p}}")]
    return rules


def from_mmdet(state_dict: dict[str, Tensor], *, where: str) -> Mapped:
    """An mmdetection 2.x/3.x state dict in gcrepro names and class order."""
    rules = detector_rules(roi_prefix=ROI_PREFIX, dcn_offset=DCN_OFFSET, box_convs=box_head_convs(state_dict))
    mapped = apply_rules(state_dict, rules, where=where)
    num_classes = num_classes_of(mapped.tensors)
    for key, t in list(mapped.tensors.items()):
        per_class = rows_per_class(key)
        if per_class is None or num_classes is None:
            continue
        if CLS_SCORE.match(key):
            mapped.tensors[key] = background_last_to_first(t)
            mapped.counts["reordered"] += 1
            continue
        expected = per_class * (num_classes - 1)
        if t.shape[0] != expected:
            raise ConvertError(
                f"{where}: {mapped.source_key(key)} has {t.shape[0]} rows; an mmdetection 2.x/3.x head with "
                f"{num_classes} fc_cls rows has {expected} ({num_classes - 1} classes x {per_class}, no background)")
        mapped.tensors[key] = add_background_rows(t, per_class)
        mapped.counts["background_rows"] += 1
    return mapped


def to_mmdet_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A gcrepro state dict in mmdetection 2.x/3.x names and class order (the inverse of ``from_mmdet``)."""
    moved: dict[str, Tensor] = {}
    for key, t in state_dict.items():
        per_class = rows_per_class(key)
        if CLS_SCORE.match(key):
            t = background_first_to_last(t)
        elif per_class is not None:
            t = drop_background_rows(t, per_class)
        moved[key] = t
    rules = detector_rules(roi_prefix=ROI_PREFIX, dcn_offset=DCN_OFFSET,
                           box_convs=box_head_convs(state_dict, GCREPRO_BOX_CONV))
    names, unmatched = rename(list(moved), rules, backwards=True)
    if unmatched:
        raise ValueError(f"gcrepro key {unmatched[0]} has no mmdetection name")
    return {names[k]: t for k, t in moved.items()}
