"""The original GCNet code (mmdetection v0.6 / v1, github.com/xvjiarui/GCNet) <-> gcrepro names.

Its checkpoints have mmdetection 2.x's names (``gcrepro.convert.mmdet``) without the ``roi_head.``
prefix, the DCN offset conv beside conv2 (``layerI.J.conv2_offset``), and gcrepro's class rows:
background FIRST in ``fc_cls``, background rows in ``fc_reg`` (4 K, class-specific heads) and in
``conv_logits`` (K). Only the names change.

``mmdet_to_v1`` goes the other way from an mmdetection 2.x/3.x state dict: the inverse of
mmdetection's ``tools/model_converters/upgrade_model_version.py`` for two-stage detectors.
"""
from __future__ import annotations

import re

from torch import Tensor

from gcrepro.convert.classes import BOX_DELTAS, add_background_rows, background_last_to_first
from gcrepro.convert.keymap import Mapped, apply_rules, rename
from gcrepro.convert.mmdet import GCREPRO_BOX_CONV, ROI_PREFIX, box_head_convs, detector_rules

DCN_OFFSET = "conv2_offset"
_FC_CLS = re.compile(r"bbox_head\.(\d+\.)?fc_cls\.(weight|bias)\Z")
_FC_REG = re.compile(r"bbox_head\.(\d+\.)?fc_reg\.(weight|bias)\Z")
_CONV_LOGITS = re.compile(r"mask_head\.(\d+\.)?conv_logits\.(weight|bias)\Z")
_CASCADE = re.compile(r"bbox_head\.\d+\.")


def from_gcnet_v1(state_dict: dict[str, Tensor], *, where: str) -> Mapped:
    """An mmdetection v1 (original GCNet) state dict in gcrepro names; the class rows already agree."""
    rules = detector_rules(roi_prefix="", dcn_offset=DCN_OFFSET, box_convs=box_head_convs(state_dict))
    return apply_rules(state_dict, rules, where=where)


def to_gcnet_v1_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A gcrepro state dict in mmdetection v1 (original GCNet) names (the inverse of ``from_gcnet_v1``)."""
    rules = detector_rules(roi_prefix="", dcn_offset=DCN_OFFSET,
                           box_convs=box_head_convs(state_dict, GCREPRO_BOX_CONV))
    names, unmatched = rename(list(state_dict), rules, backwards=True)
    if unmatched:
        raise ValueError(f"gcrepro key {unmatched[0]} has no mmdetection v1 name")
    return {names[k]: t for k, t in state_dict.items()}


def mmdet_to_v1(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An mmdetection 2.x/3.x two-stage detector's state dict as mmdetection v1 saved it.

    Undoes each rule of ``upgrade_model_version.py`` (mmdetection 3.3.0) that touches a two-stage
    detector: the ``roi_head.`` prefix of the heads goes; ``fc_cls`` gets background back in FRONT;
    a class-specific ``fc_reg`` (not the cascade's: the tool leaves class-agnostic heads alone) and
    ``conv_logits`` get their background rows back, as zeros (the upgrade dropped them). Also undoes
    mmcv's DCN naming (``conv2.conv_offset`` -> ``conv2_offset``), which is not the tool's but v1's.
    Not undone: the tool's RPN rule for checkpoints saved by mmdetection < 2.5.0 (it rotates
    ``rpn_cls.bias``); a modern state dict never went through it. Not copied: the tool cuts the LAST
    class's rows from the ``fc_reg`` and ``conv_logits`` biases (``val[:num_classes - 1]``) but the
    background's from their weights; here background is first in weights and biases alike, so the
    tool run on this function's output changes those two biases (the v1 -> gcrepro round trip holds).
    """
    class_agnostic = any(_CASCADE.match(k.removeprefix(ROI_PREFIX)) for k in state_dict)
    out: dict[str, Tensor] = {}
    for key, t in state_dict.items():
        new = key.removeprefix(ROI_PREFIX).replace(".conv2.conv_offset.", f".{DCN_OFFSET}.")
        if _FC_CLS.match(new):
            t = background_last_to_first(t)
        elif _FC_REG.match(new) and not class_agnostic:
            t = add_background_rows(t, BOX_DELTAS)
        elif _CONV_LOGITS.match(new):
            t = add_background_rows(t, 1)
        out[new] = t
    return out
