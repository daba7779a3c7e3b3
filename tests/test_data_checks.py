"""Data checked before use: DataLoader worker errors that keep the file name, orphan annotations, empty splits."""
from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest

from gcrepro.data import (
    CocoInstances,
    DataError,
    build_loader,
    check_split,
    make_toy_dataset,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("pristine"), num_train=4, num_val=2, image_size=64)


@pytest.fixture
def toy(pristine, tmp_path) -> Path:
    """A fresh copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "toy"))


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def _images(root: Path, split: str) -> list[dict]:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())["images"]


# --- errors in DataLoader workers ---------------------------------------------------------------


def test_worker_error_keeps_file_name_and_image_id(toy):
    dataset = CocoInstances(toy, "val", train=False)
    victim = _images(toy, "val")[1]
    (toy / "val2017" / victim["file_name"]).unlink()
    loader = build_loader(dataset, batch_size=1, train=False, num_workers=1, seed=0, distributed=False)
    batches = iter(loader)
    caught = None
    try:
        for _ in batches:
            pass
    except DataError as err:
        caught = err.with_traceback(None)  # frees the iterator at once: its workers stop now, not at exit
    del batches
    assert caught is not None
    message = str(caught)
    assert message == (f"image file missing: {toy / 'val2017' / victim['file_name']} (image id {victim['id']}, "
                       f"listed in {dataset.ann_file}) (in DataLoader worker 0)")
    assert "Traceback" in caught.worker_traceback and "_read_image" in caught.worker_traceback
    assert str(pickle.loads(pickle.dumps(caught))) == message  # a re-raise elsewhere keeps the same line


def test_data_error_keeps_messages_it_does_not_recognise():
    plain = DataError("Caught DataError somewhere else.\nsecond line")
    assert str(plain) == "Caught DataError somewhere else.\nsecond line" and plain.worker_traceback is None
    odd = "Caught DataError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n  no last line"
    assert str(DataError(odd)) == odd


# --- annotations and splits --------------------------------------------------------------------


def _write(root: Path, split: str, images: list[dict], annotations: list[dict]) -> Path:
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    coco = json.loads(ann_file.read_text())
    ann_file.write_text(json.dumps({**coco, "images": images, "annotations": annotations}))
    return ann_file


def _annotations(root: Path, split: str) -> list[dict]:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())["annotations"]


def test_orphan_annotations_one_warning_line_with_count_and_first_id(toy, caplog):
    anns = _annotations(toy, "val")
    orphans = [dict(anns[0], id=900, image_id=777), dict(anns[0], id=901, image_id=778)]
    ann_file = _write(toy, "val", _images(toy, "val"), anns + orphans)
    with caplog.at_level(logging.WARNING, logger="gcrepro.data"):
        dataset = CocoInstances(toy, "val", train=False)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [(f"{ann_file}: ignoring 2 annotation(s) whose image_id is not in 'images' "
                      "(first: annotation 900, image id 777)")]
    assert dataset.num_annotations == len(anns)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gcrepro.data"):
        CocoInstances(toy, "train")
    assert caplog.records == []


def test_empty_val_split_is_an_error_before_inference(toy):
    good = CocoInstances(toy, "val", train=False)
    check_split(good, purpose="eval")
    check_split(CocoInstances(toy, "train"), purpose="train")
    ann_file = _write(toy, "val", [], [])
    with pytest.raises(DataError) as excinfo:
        check_split(CocoInstances(toy, "val", train=False), purpose="eval")
    assert _one_line(excinfo) == f"{ann_file}: 'images' is empty; nothing to evaluate"
    images = _images(toy, "train")[:2]
    crowd = [dict(a, iscrowd=1) for a in _annotations(toy, "train") if a["image_id"] == images[0]["id"]]
    for anns in ([], crowd):
        _write(toy, "val", images, anns)
        dataset = CocoInstances(toy, "val", train=False)
        assert len(dataset) == 2  # evaluation keeps every image: the split check decides
        with pytest.raises(DataError) as excinfo:
            check_split(dataset, purpose="eval")
        assert _one_line(excinfo).startswith(f"{ann_file}: none of its 2 images has a usable annotation")
    with pytest.raises(ValueError, match="purpose"):
        check_split(good, purpose="test")


def test_empty_train_split_is_one_line(toy):
    ann_file = toy / "annotations" / "instances_train2017.json"
    degenerate = [dict(a, bbox=[1, 1, 0.5, 4]) for a in _annotations(toy, "train")]
    for images, anns in (([], []), (_images(toy, "train"), []), (_images(toy, "train"), degenerate)):
        _write(toy, "train", images, anns)
        with pytest.raises(DataError) as excinfo:
            CocoInstances(toy, "train")
        assert _one_line(excinfo) == (
            f"{ann_file}: no training image: none of its {len(images)} images has a usable annotation "
            "(not crowd, box at least 1x1 pixel); training needs at least one")
    assert len(CocoInstances(toy, "train", train=False)) == 4  # evaluation mode reads the same split
