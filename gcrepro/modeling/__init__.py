"""Models: GC block, ResNet/ResNeXt backbones, detectors. Names load lazily (no torch import here)."""
from __future__ import annotations

_EXPORTS = {
    "ContextBlock": "gcrepro.modeling.context_block",
    "capture_attention": "gcrepro.modeling.attention",
    "gc_blocks": "gcrepro.modeling.attention",
    "build_resnet": "gcrepro.modeling.backbone",
    "FrozenStatsBatchNorm2d": "gcrepro.modeling.norm",
    "SyncBatchNorm": "gcrepro.modeling.norm",
    "make_norm": "gcrepro.modeling.norm",
    "load_pretrained": "gcrepro.modeling.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gcrepro.modeling' has no attribute {name!r}")
