"""Distributed equivalence: 2 gloo processes x 1 image == 1 process x 2 images (one SGD step).

Why the comparison is exact (up to float summation order): DDP averages the ranks' gradients, so
the two runs agree iff the single-process loss is the MEAN of the two per-image losses. Detection
losses normalise by the number of sampled anchors / RoIs / positive RoIs of the whole batch, and
sample at random, so the test makes every count per image fixed and equal:

- both images are 64x64 (same anchors, same padding) with 2 ground-truth boxes each, and the model
  resizes neither (min_size=max_size=64);
- RPN: fg and bg IoU thresholds equal (no "between" anchors), every anchor sampled
  (batch_size_per_image >> anchors, positive_fraction=1): the RPN losses average over all anchors
  inside the image, the same number for both images;
- proposals: post-NMS top 16 per image (each image has many more candidates);
- RoI heads: every RoI sampled (batch_size_per_image >> 16 + 2, positive_fraction=1) and fg = bg
  IoU threshold 0.99, so the positives are exactly the 2 gt boxes added as proposals (random
  proposals do not overlap a gt box at IoU 0.99): box and mask losses average over 18 RoIs and
  2 positives per image;
- the backbone is fixBN (row 1): no batch statistics; the flip draw depends on (seed, epoch, index)
  only, the same in both runs; gradient clipping (35) acts on the same averaged gradient.
Same seed -> same initial weights (DDP also broadcasts rank 0's), same lr (total batch 2 in both).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcrepro.engine import api
from gcrepro.engine.checkpoint import load_checkpoint

EXACT_OVERRIDES = {
    "min_size": 64, "max_size": 64,
    "rpn_fg_iou_thresh": 0.7, "rpn_bg_iou_thresh": 0.7,
    "rpn_batch_size_per_image": 100000, "rpn_positive_fraction": 1.0,
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 16,
    "box_batch_size_per_image": 1000, "box_positive_fraction": 1.0,
    "box_fg_iou_thresh": 0.99, "box_bg_iou_thresh": 0.99,
}
RUN_OVERRIDES = {"max_iters": 1, "warmup_iters": 0, "num_workers": 0, "log_interval": 1, "epochs": 1}


def write_two_image_coco(root: Path) -> Path:
    """Two 64x64 images, 2 rectangles each (different places, colours and classes)."""
    boxes = {1: [(8, 10, 20, 18, 1), (36, 30, 22, 26, 2)], 2: [(30, 6, 26, 20, 2), (6, 34, 18, 24, 1)]}
    rng = np.random.default_rng(0)
    images, anns = [], []
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    for image_id, rects in boxes.items():
        pixels = (rng.random((64, 64, 3)) * 60).astype(np.uint8)
        for k, (x, y, w, h, cat) in enumerate(rects):
            pixels[y:y + h, x:x + w] = (200, 40 + 100 * k, 60 * cat)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": w * h,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        name = f"{image_id:012d}.png"
        for split in ("train", "val"):
            Image.fromarray(pixels).save(root / f"{split}2017" / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "annotations").mkdir(exist_ok=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_two_processes_one_image_equal_one_process_two_images(tmp_path: Path) -> None:
    data = write_two_image_coco(tmp_path / "data")
    one = api.train(1, data=data, work_dir=tmp_path / "one", profile="toy", overrides=EXACT_OVERRIDES,
                    images_per_gpu=2, **RUN_OVERRIDES)
    two = api.train(1, data=data, work_dir=tmp_path / "two", profile="toy", overrides=EXACT_OVERRIDES,
                    images_per_gpu=1, nprocs=2, **RUN_OVERRIDES)

    # The loss terms: the ranks' mean (logged by the 2-process run) equals the 2-image loss.
    # Measured: relative differences <= 1.1e-7; with per-batch normalisation left in (2000
    # proposals per image) loss_box_reg differs by 6e-4 relative.
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    m2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"):
        assert m2[key] == pytest.approx(m1[key], rel=2e-5), key
    assert m1["lr"] == m2["lr"]

    # The parameter update of the step, tensor by tensor. Measured: relative differences <= 1.0e-4
    # (float32 summation order; the random-init fixBN backbone has large activations); with
    # per-batch normalisation left in, the box head's updates differ by 6e-4 to 4e-3.
    start = api_initial_weights(data)
    w1, w2 = _weights(Path(one)), _weights(Path(two))
    moved = 0
    for name, p1 in w1.items():
        p2 = w2[name]
        if not p1.is_floating_point():
            assert torch.equal(p1, p2), name
            continue
        u1, u2 = p1 - start[name], p2 - start[name]
        if u1.abs().max() == 0:
            assert u2.abs().max() == 0, name
            continue
        moved += 1
        rel = ((u1 - u2).norm() / u1.norm()).item()
        assert rel < 3e-4, f"{name}: update differs by {rel:.2e} (relative)"
    assert moved > 100, f"only {moved} tensors changed in the step: the comparison would be vacuous"


def api_initial_weights(data: Path) -> dict[str, torch.Tensor]:
    """The weights both runs started from (same seed, same model build)."""
    from gcrepro.modeling.build import build_detector
    from gcrepro.runspec import resolve_run

    spec = resolve_run("mask_rcnn_r50_fpn_1x", data=data, profile="toy", overrides=EXACT_OVERRIDES)
    api._seed_everything(spec.train.seed)
    return build_detector(spec.model).state_dict()


def test_syncbn_row_trains_on_two_cpu_processes(tmp_path: Path) -> None:
    """DDP refuses SyncBatchNorm on CPU; the engine falls back to per-process BatchNorm2d."""
    data = write_two_image_coco(tmp_path / "data")
    final = api.train("mask_rcnn_r50_fpn_syncbn_1x", data=data, work_dir=tmp_path / "w", profile="toy",
                      overrides={"min_size": 64, "max_size": 64}, images_per_gpu=1, nprocs=2, **RUN_OVERRIDES)
    log = (tmp_path / "w" / "log.txt").read_text()
    assert "SyncBN on CPU" in log and "per-process batch statistics" in log
    state = load_checkpoint(Path(final))["model"]
    # the checkpoint keeps SyncBN's keys, so the entry's own (SyncBatchNorm) model loads it
    from gcrepro.modeling.build import build_model

    model = build_model("mask_rcnn_r50_fpn_syncbn_1x", num_classes=3, profile="toy", min_size=64, max_size=64)
    model.load_state_dict(state)


def test_revert_sync_batchnorm_keeps_parameters_and_keys() -> None:
    from torch import nn

    from gcrepro.engine.dist import revert_sync_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.Sequential(nn.SyncBatchNorm(4)))
    model[1].running_mean.fill_(0.5)
    weight = model[1].weight
    keys = set(model.state_dict())
    reverted = revert_sync_batchnorm(model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    assert type(reverted[1]) is nn.BatchNorm2d and type(reverted[2][0]) is nn.BatchNorm2d
    assert reverted[1].weight is weight and torch.all(reverted[1].running_mean == 0.5)
    assert set(reverted.state_dict()) == keys
