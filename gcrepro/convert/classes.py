"""The class rows of the box and mask predictors, in gcrepro names.

gcrepro (= torchvision = mmdetection v1): ``cls_score`` has K rows with background FIRST, the
class-specific ``bbox_pred`` 4 K rows (background's 4 included, never used), ``mask_fcn_logits`` K
rows (background's included). Cascade stages regress one class-agnostic box: 4 rows, no classes.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

CLS_SCORE = re.compile(r"roi_heads\.box_predictors?\.(\d+\.)?cls_score\.(weight|bias)\Z")
BBOX_PRED = re.compile(r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)\Z")  # class-specific: Mask R-CNN only
MASK_LOGITS = re.compile(r"roi_heads\.mask_predictors?\.(\d+\.)?mask_fcn_logits\.(weight|bias)\Z")
BOX_DELTAS = 4  # rows per class in bbox_pred


def num_classes_of(tensors: dict[str, Tensor]) -> int | None:
    """K (background included): the rows of the first ``cls_score`` weight; None when there is none."""
    key = next((k for k in tensors if CLS_SCORE.match(k) and k.endswith("weight")), None)
    return None if key is None else int(tensors[key].shape[0])


def rows_per_class(key: str) -> int | None:
    """1 for class logits, 4 for class-specific box deltas, None for a key without class rows."""
    if CLS_SCORE.match(key) or MASK_LOGITS.match(key):
        return 1
    if BBOX_PRED.match(key):
        return BOX_DELTAS
    return None


def background_last_to_first(t: Tensor) -> Tensor:
    return torch.cat([t[-1:], t[:-1]])  # [K, ...]: rows 1..K-1, bg -> bg, 1..K-1


def background_first_to_last(t: Tensor) -> Tensor:
    return torch.cat([t[1:], t[:1]])


def add_background_rows(t: Tensor, per_class: int) -> Tensor:
    return torch.cat([t.new_zeros((per_class, *t.shape[1:])), t])  # zeros: background is never decoded


def drop_background_rows(t: Tensor, per_class: int) -> Tensor:
    return t[per_class:].clone()


def select_classes(t: Tensor, classes: list[int], per_class: int) -> Tensor:
    """Rows of the classes ``classes`` (in that order), ``per_class`` rows each."""
    grouped = t.reshape(-1, per_class, *t.shape[1:])  # [K, per_class, ...]
    return grouped[classes].reshape(-1, *t.shape[1:])
