"""Can a detector trained on the toy "context" set tell its classes apart, or only find the objects?

On the context set (:mod:`gcrepro.data.toy_context`) every object is the same amber disc and its class is set by
a marker elsewhere in the image, so a COCO AP mixes two skills. This splits them, from a run's stored
detections (``RUN_DIR/results/bbox.json``, written by ``gcrepro eval``) and the val annotations:

- **class-agnostic box AP**: COCOeval with ``useCats = 0`` (every detection and every disc one class): how well
  the discs are found, whatever class is given to them;
- **top-class hits**: for each val disc, the highest-scoring detection whose box overlaps it at IoU >= 0.5 (any
  class); a hit when that detection's class is the disc's. A disc with no such detection is "missed".
  Chance is 1 / (number of cue classes) of the found discs; a detector that always answers the most frequent
  class gets that class's share (``majority_share``).

Nothing is written: the numbers are recomputed from the stored files in well under a second (toy val sets).
``python -m gcrepro.analysis.cue_classes RUNS_DIR`` prints them for every evaluated run below ``RUNS_DIR``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gcrepro.analysis.cue_attention import CUE_FIELD

CONTEXT_GENERATOR = "gcrepro.data.toy_context"  # the context set's manifest "generator"
IOU_MATCH = 0.5  # a detection "is on" a disc at box IoU >= 0.5 (COCO's AP50 threshold)


@dataclass(frozen=True)
class CueClasses:
    """The numbers of one run (the module docstring says what each is). AP values in percent."""

    discs: int  # val objects (not crowd)
    found: int  # discs with a detection at IoU >= IOU_MATCH
    hits: int  # found discs whose top detection has the disc's class
    classes: int  # cue classes present among the val discs
    majority_share: float  # share of the discs in the most frequent class
    class_agnostic_ap: float  # COCO box AP [.5:.95], useCats = 0
    class_agnostic_ap50: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.discs if self.discs else float("nan")

    def line(self) -> str:
        return (f"class-agnostic box AP {self.class_agnostic_ap:.1f} (AP50 {self.class_agnostic_ap50:.1f}); top detection's "
                f"class right for {self.hits} of {self.discs} discs ({100 * self.hit_rate:.0f}%; {self.discs - self.found} "
                f"missed; chance {100 / max(self.classes, 1):.0f}% of the found, the largest class "
                f"{100 * self.majority_share:.0f}%)")


def _class_agnostic_ap(annotations: dict, detections: list[dict]) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = annotations
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.params.useCats = 0
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100 * max(float(evaluation.stats[0]), 0.0), 100 * max(float(evaluation.stats[1]), 0.0)


def cue_classes(annotation_file: Path, detections_file: Path) -> CueClasses:
    """The numbers for one val annotation file and one COCO results file (``bbox.json``)."""
    return _split(json.loads(Path(annotation_file).read_text()), detections_file)


def _split(annotations: dict, detections_file: Path) -> CueClasses:
    from torchvision.ops import box_convert, box_iou

    detections = json.loads(Path(detections_file).read_text())
    if not isinstance(detections, list):
        raise ValueError(f"{detections_file}: expected a COCO results list of detections, got {type(detections).__name__}")
    by_image: dict[int, list[dict]] = {}
    for det in detections:
        by_image.setdefault(int(det["image_id"]), []).append(det)
    discs = [a for a in annotations["annotations"] if not a.get("iscrowd", 0)]
    found = hits = 0
    for disc in discs:
        dets = by_image.get(int(disc["image_id"]), [])
        if not dets:
            continue
        boxes = box_convert(torch.tensor([d["bbox"] for d in dets], dtype=torch.float64), "xywh", "xyxy")  # [K, 4]
        disc_box = box_convert(torch.tensor([disc["bbox"]], dtype=torch.float64), "xywh", "xyxy")  # [1, 4]
        overlap = (box_iou(disc_box, boxes)[0] >= IOU_MATCH).numpy()  # [K]
        if not overlap.any():
            continue
        found += 1
        scores = np.where(overlap, [float(d["score"]) for d in dets], -np.inf)
        hits += int(dets[int(np.argmax(scores))]["category_id"]) == int(disc["category_id"])
    counts = Counter(int(a["category_id"]) for a in discs)
    ap, ap50 = _class_agnostic_ap(annotations, detections)
    return CueClasses(discs=len(discs), found=found, hits=hits, classes=len(counts),
                      majority_share=max(counts.values()) / len(discs) if discs else float("nan"),
                      class_agnostic_ap=ap, class_agnostic_ap50=ap50)


def run_cue_classes(run_dir: Path) -> CueClasses | None:
    """The numbers of an evaluated run (its metrics.json names the val set; its results/bbox.json holds the
    detections); None when that val set is not a toy context set (told by its manifest, so a COCO run's
    evaluate.ipynb does not read COCO's annotations for nothing) or records no cue."""
    from gcrepro.data.coco import annotation_file
    from gcrepro.data.toy import read_manifest

    metrics_file = Path(run_dir) / "metrics.json"
    detections = Path(run_dir) / "results" / "bbox.json"
    for needed in (metrics_file, detections):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: missing; evaluate the run first (gcrepro eval or evaluate.ipynb)")
    root = json.loads(metrics_file.read_text()).get("eval_data", {}).get("root")
    if not root:
        raise ValueError(f"{metrics_file}: no eval_data.root; evaluate the run again with this gcrepro")
    if (read_manifest(root) or {}).get("generator") != CONTEXT_GENERATOR:
        return None
    annotations = json.loads(annotation_file(Path(root), "val").read_text())
    if not any(CUE_FIELD in img for img in annotations["images"]):
        return None
    return _split(annotations, detections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gcrepro.analysis.cue_classes",
                                     description="Class-agnostic AP and top-class hits of the evaluated runs on a "
                                                 "toy context set below RUNS_DIR (toy data, never compared with COCO).")
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of lines")
    args = parser.parse_args(argv)
    runs = sorted(p.parent for p in args.runs_dir.rglob("metrics.json") if (p.parent / "results" / "bbox.json").is_file())
    if not runs:
        print(f"{args.runs_dir}: no evaluated run (metrics.json beside results/bbox.json) below it", file=sys.stderr)
        return 2
    for run in runs:
        numbers = run_cue_classes(run)
        name = run.relative_to(args.runs_dir)
        if numbers is None:
            print(f"{name}: not a toy context set (gcrepro data toy --kind context)")
        elif args.json:
            print(json.dumps({"run": str(name), **asdict(numbers), "hit_rate": numbers.hit_rate}))
        else:
            print(f"{name} [toy]: {numbers.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
