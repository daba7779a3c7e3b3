"""The original GCNet (mmdetection v1) layout, checked by mmdetection's own upgrade tool.

mmdetection 3.3.0 ships ``tools/model_converters/upgrade_model_version.py`` (installed under
``mmdet/.mim/tools``): it turns a v1 checkpoint into the 2.x/3.x layout. ``mmdet_upgrade`` runs its
``convert`` on a v1 checkpoint written by ``write_v1_checkpoint``, whose meta says what a v1
release says: an mmdetection version below 2.5.0 and a v1-style config (heads at the top of
``model``; a cascade's ``bbox_head`` is a list), which the tool parses to choose its rules.
"""
from __future__ import annotations

import contextlib
import re
import importlib.util
import io
import os
from pathlib import Path

import torch
from torch import Tensor

_BIAS_TRUNCATED_AT_END = re.compile(r"roi_head\.(bbox_head(\.\d+)?\.fc_reg|mask_head(\.\d+)?\.conv_logits)\.bias\Z")
V1_VERSION = "1.0rc0"  # what the original GCNet code recorded (any version < 2.5.0 takes the same rules)


def v1_config_text(*, cascade: bool, norm: str) -> str:
    """The part of a v1 config that ``upgrade_model_version.parse_config`` reads (its first line is
    commented out by the tool), and the backbone norm (``norm``: gcrepro's "fixbn" | "syncbn")."""
    head = "dict(type='SharedFCBBoxHead', num_classes=81, reg_class_agnostic={})"
    bbox_head = f"[{', '.join([head.format(True)] * 3)}]" if cascade else head.format(False)
    kind = "CascadeRCNN" if cascade else "MaskRCNN"
    norm_cfg = "dict(type='SyncBN', requires_grad=True)" if norm == "syncbn" else "dict(type='BN', requires_grad=False)"
    return (f"# original GCNet (mmdetection v1) layout\n"
            f"model = dict(type='{kind}', backbone=dict(norm_cfg={norm_cfg}), "
            f"rpn_head=dict(type='RPNHead', use_sigmoid_cls=True), "
            f"bbox_head={bbox_head}, mask_head=dict(type='FCNMaskHead', num_classes=81))\n")


def write_v1_checkpoint(state_dict: dict[str, Tensor], path: str | Path, *, cascade: bool, norm: str) -> Path:
    """A v1 checkpoint of ``state_dict`` (already in v1 names) as the original GCNet code saved one."""
    path = Path(path)
    meta = {"mmdet_version": V1_VERSION, "config": v1_config_text(cascade=cascade, norm=norm)}
    torch.save({"meta": meta, "state_dict": dict(state_dict)}, path)
    return path


def _upgrade_tool():
    import mmdet

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "tools", "model_converters",
                        "upgrade_model_version.py")
    spec = importlib.util.spec_from_file_location("mmdet_upgrade_model_version", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mmdet_upgrade(v1_path: str | Path, out_path: str | Path, *, num_classes: int = 81) -> dict[str, Tensor]:
    """mmdetection's ``upgrade_model_version.convert`` on ``v1_path``; returns the upgraded state dict."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints one line per tensor it changes
        _upgrade_tool().convert(str(v1_path), str(out_path), num_classes)
    return torch.load(out_path, weights_only=True)["state_dict"]


def upgraded_by_the_tool(key: str, original: Tensor, *, class_agnostic: bool) -> Tensor:
    """What ``upgrade_model_version.convert`` makes of tensor ``key`` of an mmdetection 2.x/3.x
    state dict that went to v1 with zero background rows in front (``gcrepro.convert.mmdet_to_v1``).

    The tool's rules are not all each other's inverse, so three tensors do not come back:
    - ``rpn_head.rpn_cls.bias``: its rule for checkpoints older than 2.5.0 (``reorder_cls_channel``)
      rotates the bias by one, also for a 3-anchor sigmoid RPN, whose weight it leaves alone;
    - ``fc_reg.bias`` (class-specific heads) and ``conv_logits.bias``: ``truncate_reg_channel`` and
      ``truncate_cls_channel`` drop the background rows of a WEIGHT at the front (``[1:]``) but of a
      BIAS at the end (``[:num_classes - 1]``), so the bias keeps the zero background row and loses
      the last class's.
    Every other tensor comes back unchanged.
    """
    if key == "rpn_head.rpn_cls.bias":
        return torch.roll(original, -1)
    if _BIAS_TRUNCATED_AT_END.match(key) and not (class_agnostic and ".fc_reg." in key):
        rows = 4 if ".fc_reg." in key else 1  # box deltas per class | mask logits per class
        return torch.cat([original.new_zeros(rows), original[:-rows]])
    return original
