"""gcrepro.analysis.cue_classes: class-agnostic AP and top-class hits, on hand-made detections whose answers are
known, and on a real (tiny) toy context set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcrepro.analysis.cue_classes import cue_classes, main, run_cue_classes

DISCS = [  # image, class, box (xywh)
    (1, 1, [10.0, 10.0, 20.0, 20.0]),
    (1, 1, [60.0, 60.0, 20.0, 20.0]),
    (2, 2, [30.0, 30.0, 24.0, 24.0]),
    (3, 3, [5.0, 50.0, 16.0, 16.0]),
]


def _annotations(path: Path) -> Path:
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = [{"id": k + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for k, (img, cat, box) in enumerate(DISCS)]
    cats = [{"id": c, "name": f"disc_cue_{c}"} for c in (1, 2, 3)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _detections(path: Path, dets: list[tuple[int, int, list[float], float]]) -> Path:
    path.write_text(json.dumps([{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]))
    return path


def test_right_boxes_wrong_classes_are_found_but_not_hits(tmp_path: Path) -> None:
    gt = _annotations(tmp_path / "gt.json")
    wrong = [(img, cat % 3 + 1, box, 0.9) for img, cat, box in DISCS]  # every disc found, every class wrong
    numbers = cue_classes(gt, _detections(tmp_path / "dt.json", wrong))
    assert (numbers.discs, numbers.found, numbers.hits, numbers.classes) == (4, 4, 0, 3)
    assert numbers.class_agnostic_ap == pytest.approx(100.0) and numbers.class_agnostic_ap50 == pytest.approx(100.0)
    assert numbers.majority_share == pytest.approx(0.5)
    assert "right for 0 of 4 discs" in numbers.line()


def test_the_top_scoring_overlapping_detection_decides(tmp_path: Path) -> None:
    gt = _annotations(tmp_path / "gt.json")
    dets = [
        (1, 2, [10.0, 10.0, 20.0, 20.0], 0.4), (1, 1, [11.0, 11.0, 20.0, 20.0], 0.8),  # disc 1: the 0.8 one, right
        (1, 1, [60.0, 60.0, 20.0, 20.0], 0.3), (1, 3, [61.0, 60.0, 20.0, 20.0], 0.7),  # disc 2: the 0.7 one, wrong
        (1, 1, [0.0, 80.0, 5.0, 5.0], 0.99),  # overlaps no disc: ignored however high its score
        (2, 2, [30.0, 30.0, 24.0, 24.0], 0.6),  # disc 3: right
        (3, 3, [40.0, 0.0, 16.0, 16.0], 0.9),  # disc 4: nothing at IoU >= 0.5: missed
    ]
    numbers = cue_classes(gt, _detections(tmp_path / "dt.json", dets))
    assert (numbers.found, numbers.hits) == (3, 2)
    assert numbers.hit_rate == pytest.approx(0.5)
    assert 0.0 < numbers.class_agnostic_ap < 100.0  # a false positive ranked first and a missed disc


def test_no_detections(tmp_path: Path) -> None:
    numbers = cue_classes(_annotations(tmp_path / "gt.json"), _detections(tmp_path / "dt.json", []))
    assert (numbers.found, numbers.hits, numbers.class_agnostic_ap) == (0, 0, 0.0)


def test_a_results_file_that_is_not_a_list_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bbox.json"
    bad.write_text('{"image_id": 1}')
    with pytest.raises(ValueError, match="bbox.json: expected a COCO results list"):
        cue_classes(_annotations(tmp_path / "gt.json"), bad)


def _fake_run(run: Path, data_root: Path, dets: list[dict]) -> Path:
    (run / "results").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"eval_data": {"root": str(data_root)}}))
    (run / "results" / "bbox.json").write_text(json.dumps(dets))
    return run


def test_runs_on_a_context_set_and_says_when_the_set_has_no_cue(tmp_path: Path, capsys) -> None:
    from gcrepro.data import make_toy_dataset
    from gcrepro.data.coco import annotation_file

    context = make_toy_dataset(tmp_path / "ctx", num_train=2, num_val=3, image_size=64, kind="context")
    shapes = make_toy_dataset(tmp_path / "shapes", num_train=2, num_val=1, image_size=64)
    truth = json.loads(annotation_file(context, "val").read_text())["annotations"]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in truth]
    runs = tmp_path / "runs"
    numbers = run_cue_classes(_fake_run(runs / "ctx_run", context, perfect))
    assert numbers.hits == numbers.discs == len(truth) and numbers.class_agnostic_ap == pytest.approx(100.0)
    assert run_cue_classes(_fake_run(runs / "shapes_run", shapes, [])) is None
    assert run_cue_classes(_fake_run(tmp_path / "elsewhere" / "coco_run", tmp_path / "no_such_set", [])) is None  # COCO
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ctx_run [toy]: class-agnostic box AP 100.0") and f"right for {len(truth)} of" in out[0]
    assert out[1] == "shapes_run: not a toy context set (gcrepro data toy --kind context)"


def test_a_run_without_results_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"results/bbox.json: missing; evaluate the run first"):
        run_cue_classes(tmp_path)
