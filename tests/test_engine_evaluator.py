"""COCOEvaluator: ground truth fed back scores AP 100; its numbers equal a direct pycocotools run."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from gcrepro.engine.evaluate import STAT_KEYS, COCOEvaluator


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory):
    from gcrepro.data import CocoInstances, make_toy_dataset

    root = make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", seed=1, num_train=2, num_val=12, image_size=96)
    return CocoInstances(root, "val", train=False)


def _gt_as_predictions(dataset, index: int) -> tuple[dict, dict]:
    """One image's ground truth in the model's output format (boxes xyxy, labels, scores, mask probs)."""
    image, target = dataset[index]
    k = len(target["labels"])
    output = {
        "boxes": target["boxes"].clone(),
        "labels": target["labels"].clone(),
        "scores": torch.ones(k),
        "masks": target["masks"][:, None].float(),  # [K, 1, H, W] "probabilities" 0/1
    }
    return {"image_id": target["image_id"]}, output


def test_ground_truth_as_predictions_scores_100(val_set, tmp_path: Path) -> None:
    evaluator = COCOEvaluator(val_set.coco, label_to_cat_id=val_set.label_to_cat_id, output_dir=tmp_path)
    n_objects = 0
    for i in range(len(val_set)):
        target, output = _gt_as_predictions(val_set, i)
        n_objects += len(output["labels"])
        evaluator.process([target], [output])
    metrics = evaluator.evaluate()
    assert n_objects > 10
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(STAT_KEYS)
        assert metrics[iou_type]["AP"] == pytest.approx(100.0), iou_type
        assert metrics[iou_type]["AP75"] == pytest.approx(100.0), iou_type
        assert metrics[iou_type]["AR100"] == pytest.approx(100.0), iou_type
    # results use the ORIGINAL category ids (toy ids have gaps: 1, 2, 3, 5, 7)
    cats = {r["category_id"] for r in json.loads((tmp_path / "bbox.json").read_text())}
    assert cats <= set(val_set.coco.getCatIds()) and cats - {1, 2, 3}


def test_equals_direct_pycocotools_on_same_detections(val_set, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    evaluator = COCOEvaluator(val_set.coco, label_to_cat_id=val_set.label_to_cat_id, output_dir=tmp_path)
    for i in range(len(val_set)):
        target, out = _gt_as_predictions(val_set, i)
        k = len(out["labels"])
        keep = torch.from_numpy(rng.random(k) > 0.25)  # miss some objects
        boxes = out["boxes"][keep] + torch.from_numpy(rng.normal(0, 3, (int(keep.sum()), 4))).float()  # jitter
        labels = out["labels"][keep]
        masks = torch.roll(out["masks"][keep], shifts=int(rng.integers(-3, 4)), dims=-1)  # shifted masks
        # plus false positives with random boxes, labels and blob masks
        h, w = out["masks"].shape[-2:]
        n_fp = int(rng.integers(0, 3))
        xy = torch.from_numpy(rng.uniform(0, min(h, w) / 2, (n_fp, 2))).float()
        fp_boxes = torch.cat([xy, xy + 20], dim=1)
        fp_masks = torch.zeros(n_fp, 1, h, w)
        for j in range(n_fp):
            x0, y0 = int(xy[j, 0]), int(xy[j, 1])
            fp_masks[j, 0, y0:y0 + 20, x0:x0 + 20] = 0.9
        fp_labels = torch.from_numpy(rng.integers(1, val_set.num_classes, n_fp))
        output = {
            "boxes": torch.cat([boxes, fp_boxes]),
            "labels": torch.cat([labels, fp_labels]),
            "scores": torch.from_numpy(rng.uniform(0.05, 1.0, len(labels) + n_fp)).float(),
            "masks": torch.cat([masks, fp_masks]),
        }
        evaluator.process([target], [output])
    metrics = evaluator.evaluate()

    for iou_type in ("bbox", "segm"):
        results = json.loads((tmp_path / f"{iou_type}.json").read_text())
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = val_set.coco.loadRes(results)
            direct = COCOeval(val_set.coco, coco_dt, iou_type)
            direct.evaluate()
            direct.accumulate()
            direct.summarize()
        expected = {k: (v * 100 if v >= 0 else None) for k, v in zip(STAT_KEYS, direct.stats)}
        assert metrics[iou_type] == pytest.approx(expected), iou_type
        assert 5.0 < metrics[iou_type]["AP"] < 95.0, "perturbed detections should score neither 0 nor 100"
