"""COCO evaluation: detections -> COCO results JSON -> COCOeval bbox + segm (12 numbers each).

:class:`COCOEvaluator` follows detectron2's evaluator protocol: ``reset()``, ``process(targets,
outputs)`` per batch (converts detections to COCO result dicts right away: xywh boxes, original
category ids, RLE masks at the original image size), ``evaluate()`` (gathers every rank's results
to rank 0, writes ``results/bbox.json`` and ``results/segm.json`` atomically, runs COCOeval on the
processed images and returns AP/AR in percent; other ranks return ``{}``).
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gcrepro.engine import dist
from gcrepro.atomic import write_json_atomic
from gcrepro.run_metrics import COCO_KEYS

logger = logging.getLogger(__name__)

STAT_KEYS = COCO_KEYS  # COCOeval.stats order (pycocotools summarize())
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # SPEC §3: mask probabilities binarised at 0.5


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool/uint8 [K, H, W] -> K COCO RLEs with ``counts`` as str (JSON-ready)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # [H, W, K]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco(
    output: dict[str, torch.Tensor],
    *,
    image_id: int,
    height: int,
    width: int,
    label_to_cat_id: dict[int, int],
    with_masks: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's detections (torchvision format) -> (bbox results, segm results)."""
    boxes = output["boxes"].detach().float().cpu()  # [K, 4] xyxy
    scores = output["scores"].detach().float().cpu().tolist()  # [K]
    labels = output["labels"].detach().cpu().tolist()  # [K]
    masks = output.get("masks") if with_masks else None  # [K, 1, h, w] probabilities
    if masks is not None:
        masks = masks.detach().float()
        if tuple(masks.shape[-2:]) != (height, width):  # predictions made at another scale
            sy, sx = height / masks.shape[-2], width / masks.shape[-1]
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        masks = (masks[:, 0] > MASK_THRESHOLD).cpu().numpy()  # bool [K, H, W]
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    box_list = xywh.tolist()
    bbox_res, segm_res = [], []
    rles = encode_masks(masks) if masks is not None else []
    for k, (box, score, label) in enumerate(zip(box_list, scores, labels)):
        cat = label_to_cat_id[int(label)]
        bbox_res.append({"image_id": image_id, "category_id": cat, "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
        if masks is not None:
            segm_res.append({"image_id": image_id, "category_id": cat, "segmentation": rles[k], "score": round(score, 5)})
    return bbox_res, segm_res


def summarize(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: list[int]) -> dict[str, float | None]:
    """COCOeval on ``image_ids`` -> the 12 standard numbers in percent (None where COCO says -1)."""
    if not results:
        logger.warning("%s: no detections; every AP/AR is 0", iou_type)
        return {k: 0.0 for k in STAT_KEYS}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.info("COCOeval %s:\n%s", iou_type, "\n".join(l for l in out.getvalue().splitlines() if l.startswith(" Average")))
    return {k: (float(v) * 100.0 if v >= 0 else None) for k, v in zip(STAT_KEYS, evaluator.stats)}


class COCOEvaluator:
    """Accumulates detections per image; ``evaluate()`` returns {"bbox": {...}, "segm": {...}} on rank 0."""

    def __init__(
        self,
        coco_gt: COCO,
        *,
        label_to_cat_id: dict[int, int],
        output_dir: str | Path | None,
        iou_types: tuple[str, ...] = IOU_TYPES,
    ) -> None:
        for t in iou_types:
            if t not in IOU_TYPES:
                raise ValueError(f"iou type {t!r}: expected one of {IOU_TYPES}")
        self.coco_gt = coco_gt
        self.label_to_cat_id = label_to_cat_id
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.iou_types = iou_types
        self.reset()

    def reset(self) -> None:
        self._results: dict[int, dict[str, list[dict[str, Any]]]] = {}  # image id -> {"bbox": [...], "segm": [...]}

    def process(self, targets: list[dict[str, Any]], outputs: list[dict[str, torch.Tensor]]) -> None:
        """One batch: ``targets[i]["image_id"]`` names the image of ``outputs[i]``."""
        for target, output in zip(targets, outputs):
            image_id = int(target["image_id"])
            info = self.coco_gt.imgs[image_id]
            bbox_res, segm_res = detections_to_coco(
                output, image_id=image_id, height=int(info["height"]), width=int(info["width"]),
                label_to_cat_id=self.label_to_cat_id, with_masks="segm" in self.iou_types,
            )
            self._results[image_id] = {"bbox": bbox_res, "segm": segm_res}

    def evaluate(self) -> dict[str, dict[str, float | None]]:
        gathered = dist.all_gather_object(self._results)
        if not dist.is_main_process():
            return {}
        merged: dict[int, dict[str, list]] = {}
        for part in gathered:
            merged.update(part)  # an image seen by two ranks (sampler padding) counts once
        image_ids = sorted(merged)
        metrics: dict[str, dict[str, float | None]] = {}
        for iou_type in self.iou_types:
            results = [r for i in image_ids for r in merged[i][iou_type]]
            if self.output_dir is not None:
                write_json_atomic(self.output_dir / f"{iou_type}.json", results, indent=None)
            metrics[iou_type] = summarize(self.coco_gt, results, iou_type, image_ids)
        return metrics
