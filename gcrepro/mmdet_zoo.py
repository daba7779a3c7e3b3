"""mmdetection's public re-run of the GCNet table: its box and mask AP and released checkpoint per row.

``mmdet_gcnet.csv`` beside this file holds the 19 rows of the table that mmdetection re-trained, as
published in mmdetection 3.3.0's ``configs/gcnet/metafile.yml`` (the numbers of its
``configs/gcnet/README.md``; COCO val2017, trained with mmdetection 2.x). The 2x-schedule, the
4conv1fc and the fixBN baseline rows have no mmdetection counterpart.

    mmdet_model_of("mask_rcnn_r50_fpn_syncbn_gc_r16_1x").box_ap   # 40.4
    entry_for_file("mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_20200202-587b99aa.pth")
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

ZOO_CSV = Path(__file__).resolve().parent / "mmdet_gcnet.csv"
SOURCE = "mmdetection 3.3.0, configs/gcnet/metafile.yml (configs/gcnet/README.md)"


@dataclass(frozen=True)
class MmdetModel:
    row: int
    entry: str
    config: str  # mmdetection config path, e.g. configs/gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py
    box_ap: float
    mask_ap: float
    weights_url: str

    @property
    def weights_file(self) -> str:
        """The released checkpoint's file name (as downloaded)."""
        return self.weights_url.rsplit("/", 1)[-1]

    @property
    def config_name(self) -> str:
        return Path(self.config).stem


@functools.cache
def mmdet_models() -> tuple[MmdetModel, ...]:
    with open(ZOO_CSV, newline="") as f:
        return tuple(MmdetModel(row=int(r["row"]), entry=r["entry"], config=r["mmdet_config"],
                                box_ap=float(r["mmdet_box_ap"]), mask_ap=float(r["mmdet_mask_ap"]),
                                weights_url=r["weights_url"]) for r in csv.DictReader(f))


def mmdet_model_of(entry: str) -> MmdetModel | None:
    """mmdetection's re-run of the entry named ``entry``, or None when mmdetection has none."""
    return next((m for m in mmdet_models() if m.entry == entry), None)


def entry_for_file(file_name: str) -> str | None:
    """The entry whose released mmdetection checkpoint has this file name (or config name), else None."""
    stem = Path(file_name).name
    for m in mmdet_models():
        if stem == m.weights_file or Path(stem).stem == m.config_name:
            return m.entry
    return None
