"""mmdetection's own GCNet detector from one of its ``configs/gcnet`` configs, on CPU, in eval mode.

The configs come from the installed package (``mmdet/.mim/configs/gcnet/<name>.py``, base configs
resolved by mmengine). SyncBN becomes BN (same parameters and state-dict keys; SyncBN cannot run
without a process group). The model is built by mmdetection's registry; ``init_weights`` is not
called (it would fetch ImageNet weights), :mod:`mmdet_oracle.weights` sets every tensor instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import mmdet_oracle  # noqa: F401  (installs the mmcv._ext stand-in first)

GCNET_CONFIG_DIR = ("configs", "gcnet")


@dataclass
class MmdetModel:
    """A built mmdetection detector with the config it came from."""

    name: str  # config name, e.g. "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco"
    config: object  # mmengine.Config, SyncBN already replaced by BN
    config_text: str  # the resolved config as released (SyncBN kept): ``Config.pretty_text``, what mmdetection saves
    model: object  # mmdet.models.detectors.TwoStageDetector, eval mode, CPU


def config_path(name: str) -> str:
    import mmdet

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", *GCNET_CONFIG_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmdet config {name!r}: no file {path}; expected a name from configs/gcnet")
    return path


def syncbn_to_bn(node):
    """A config tree with every ``dict(type='SyncBN', ...)`` turned into ``type='BN'`` (in place)."""
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for value in node.values():
            syncbn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            syncbn_to_bn(value)
    return node


def build_mmdet(name: str) -> MmdetModel:
    """mmdetection's detector for ``configs/gcnet/<name>.py``: CPU, eval mode, weights unset."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(config_path(name))
    text = cfg.pretty_text
    syncbn_to_bn(cfg.model)
    model = MODELS.build(cfg.model).eval()
    return MmdetModel(name=name, config=cfg, config_text=text, model=model)
