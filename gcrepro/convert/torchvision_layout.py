"""torchvision's ``maskrcnn_resnet50_fpn`` (row 1's architecture) -> gcrepro names.

gcrepro's names ARE torchvision's (>= 0.13); older torchvision named a few modules without their
``Conv2dNormActivation`` wrapper: ``backbone.fpn.inner_blocks.K`` / ``layer_blocks.K`` (now ``.K.0``),
``rpn.head.conv`` (now ``rpn.head.conv.0.0``) and ``roi_heads.mask_head.mask_fcnN`` (now ``.N-1.0``).

torchvision's COCO models have 91 class rows, one per COCO category id (1..90, ten of them unused,
and background 0); gcrepro's COCO labels are the 80 categories in id order (``gcrepro.data.coco``).
A 91-row head is cut to background + those 80 rows.
"""
from __future__ import annotations

from torch import Tensor

from gcrepro.convert.classes import num_classes_of, rows_per_class, select_classes
from gcrepro.convert.keymap import Mapped, Rule, apply_rules
from gcrepro.data.identity import COCO_CATEGORY_IDS

COCO_ID_ROWS = 91  # background + COCO category ids 1..90
_RULES = [
    Rule("backbone.fpn.inner_blocks.{k}.{p}", "backbone.fpn.inner_blocks.{k}.0.{p}"),
    Rule("backbone.fpn.layer_blocks.{k}.{p}", "backbone.fpn.layer_blocks.{k}.0.{p}"),
    Rule("rpn.head.conv.{p}", "rpn.head.conv.0.0.{p}"),
    *(Rule(f"roi_heads.mask_head.mask_fcn{n}.{{p}}", f"roi_heads.mask_head.{n - 1}.0.{{p}}") for n in range(1, 9)),
    Rule("{rest}", "{rest}"),
]


def from_torchvision(state_dict: dict[str, Tensor], *, where: str) -> Mapped:
    """A torchvision Mask R-CNN state dict in gcrepro names; a 91-row COCO head cut to 81 rows."""
    mapped = apply_rules(state_dict, _RULES, where=where)
    if num_classes_of(mapped.tensors) != COCO_ID_ROWS:
        return mapped
    keep = [0, *COCO_CATEGORY_IDS]
    for key, t in list(mapped.tensors.items()):
        per_class = rows_per_class(key)
        if per_class is not None:
            mapped.tensors[key] = select_classes(t, keep, per_class)
            mapped.counts["reordered"] += 1
    mapped.notes.append(f"{COCO_ID_ROWS} class rows read as torchvision's COCO category ids: kept background and "
                        f"the {len(COCO_CATEGORY_IDS)} COCO categories in id order (gcrepro's COCO labels), "
                        f"dropped the {COCO_ID_ROWS - 1 - len(COCO_CATEGORY_IDS)} unused ids")
    return mapped
