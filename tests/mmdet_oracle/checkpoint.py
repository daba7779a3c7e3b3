"""An mmdetection checkpoint file, laid out as mmdetection's released GCNet checkpoints are.

    {"meta": {"mmdet_version": "3.3.0", "config": <resolved config text>, "experiment_name": <config name>,
              "dataset_meta": {"classes": (80 COCO names)}},
     "state_dict": {name: tensor}}

Only tensors, strings, ints and tuples of strings: ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch


def mmdet_checkpoint(mm) -> dict:
    """The checkpoint dict of ``mm`` (a ``build.MmdetModel``) with its current weights."""
    import mmdet
    from mmdet.datasets import CocoDataset

    state = OrderedDict((k, v.detach().clone()) for k, v in mm.model.state_dict().items())
    meta = {"mmdet_version": mmdet.__version__, "config": mm.config_text, "experiment_name": mm.name,
            "dataset_meta": {"classes": tuple(CocoDataset.METAINFO["classes"])}}
    return {"meta": meta, "state_dict": state}


def write_mmdet_checkpoint(mm, path: str | Path) -> Path:
    """Save ``mmdet_checkpoint(mm)`` to ``path`` (torch.save), as mmdetection's runner does."""
    path = Path(path)
    torch.save(mmdet_checkpoint(mm), path)
    return path
