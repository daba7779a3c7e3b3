"""``gcrepro.build_model``: a table row's detector, new, or with the weights of a checkpoint of any layout.

    model = gcrepro.build_model("mask_rcnn_r50_fpn_gc_r16_1x", num_classes=81)          # new, paper profile
    model = gcrepro.build_model(8, checkpoint="mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_...pth")

With ``checkpoint`` the checkpoint decides the model (its run spec, its converted ModelConfig with its
conventions, or a conversion in memory of an mmdetection / original-GCNet / torchvision file); the model
comes back in eval mode with its weights loaded (strict).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def build_model(name_or_row: str | int, *, checkpoint: str | Path | None = None, device: str = "cpu",
                **options: Any) -> nn.Module:
    """The detector of one table row (name like ``mask_rcnn_r50_fpn_gc_r16_1x`` or row 1..30).

    Without ``checkpoint``: ``gcrepro.modeling.build.build_model(name_or_row, **options)`` (``num_classes``,
    ``profile``, ``gc_impl``, ``pretrained_backbone``, ModelConfig overrides). With it: the checkpoint's
    model, loaded, in eval mode on ``device``; ``options`` may only choose ``gc_impl``.
    """
    if checkpoint is None:
        from gcrepro.modeling.build import build_model as build_new

        return build_new(name_or_row, **options)
    import dataclasses

    from gcrepro.engine.config import ConfigError
    from gcrepro.engine.model_checkpoint import read_model
    from gcrepro.modeling.build import build_detector

    extra = sorted(set(options) - {"gc_impl"})
    if extra:
        raise ConfigError(f"build_model(checkpoint={checkpoint}): {extra[0]!r} is decided by the checkpoint; "
                          "only gc_impl may be chosen")
    held = read_model(name_or_row, checkpoint)
    config = dataclasses.replace(held.model_config, **options)
    model = build_detector(config)
    model.load_state_dict(held.state_dict)
    return model.to(device).eval()
