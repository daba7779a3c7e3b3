"""Checkpoint conversion: mmdetection 2.x/3.x, the original GCNet code (mmdetection v1), torchvision and
gcrepro checkpoints -> a gcrepro checkpoint (``gcrepro convert SRC --out DST [--entry NAME|ROW]``).

    conv = convert_checkpoint("mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.pth")   # -> Converted
    save_converted(conv, "row2.pth")         # weights_only-loadable, written atomically
    load_checkpoint_any(path) -> dict        # the safe loader alone

Modules: ``safe_load`` (reading without running code), ``layouts`` (which layout; ``mmdet``,
``gcnet_v1``, ``torchvision_layout``: their names and class rows <-> gcrepro's, by the rules of
``keymap`` and ``classes``), ``structure`` and ``infer`` (which table entry; the ``--entry``
preflight), ``fit`` (every model key filled), ``api``, ``cli``. Names load lazily (no torch import
for the command line's --help).
"""
from __future__ import annotations

_EXPORTS = {
    "ConvertError": "gcrepro.convert.errors",
    "Converted": "gcrepro.convert.api",
    "convert_checkpoint": "gcrepro.convert.api",
    "save_converted": "gcrepro.convert.api",
    "load_checkpoint_any": "gcrepro.convert.safe_load",
    "to_mmdet_layout": "gcrepro.convert.mmdet",
    "to_gcnet_v1_layout": "gcrepro.convert.gcnet_v1",
    "mmdet_to_v1": "gcrepro.convert.gcnet_v1",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gcrepro.convert' has no attribute {name!r}")
