"""Data checked before use: every image of a split (missing, corrupt, wrong size, cut off), the check's
cache, ``gcrepro data check``, worker errors that keep the file name, orphan annotations, empty splits."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcrepro.data import (
    CocoInstances,
    DataError,
    build_loader,
    check_images,
    check_split,
    make_toy_dataset,
)
from gcrepro.data.check import inspect_image
from gcrepro.data.check_cache import CACHE_ENV


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("pristine"), num_train=4, num_val=2, image_size=64)


@pytest.fixture
def toy(pristine, tmp_path) -> Path:
    """A fresh copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "toy"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "checks"


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def _images(root: Path, split: str) -> list[dict]:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())["images"]


def _state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())


def _wrong_size(path: Path) -> None:
    with Image.open(path) as im:
        im.resize((im.width + 3, im.height)).save(path)


DAMAGE = {
    "missing": (Path.unlink, "file missing"),
    "truncated": (_truncate, "cut off (no PNG end marker), cannot decode"),
    "random bytes": (_random_bytes, "cannot decode: not an image format Pillow knows"),
    "wrong size": (_wrong_size, "is {wider}x{height} pixels but the annotation file says {width}x{height};"),
}


# --- the image check ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DAMAGE)
def test_bad_image_found_before_use_with_path_id_and_count(toy, kind):
    damage, reason = DAMAGE[kind]
    listed = _images(toy, "train")
    victim = listed[2]
    damage(toy / "train2017" / victim["file_name"])
    CocoInstances(toy, "train")  # reading the annotations does not touch the images
    with pytest.raises(DataError) as excinfo:
        check_images(toy, "train")
    message = _one_line(excinfo)
    reason = reason.format(width=victim["width"], height=victim["height"], wider=victim["width"] + 3)
    assert message.startswith(f"{toy / 'train2017' / victim['file_name']} (image id {victim['id']}): {reason}")
    assert message.endswith(f"; 1 of {len(listed)} images of instances_train2017.json are bad (this is the first listed)")
    assert check_images(toy, "val").images == 2  # the other split is fine


def test_first_listed_bad_image_is_named_and_all_are_counted(toy):
    listed = _images(toy, "train")
    for info, kind in zip(listed[1:], ("random bytes", "missing", "truncated")):
        DAMAGE[kind][0](toy / "train2017" / info["file_name"])
    with pytest.raises(DataError) as excinfo:
        check_images(toy, "train", workers=2)
    message = _one_line(excinfo)
    assert message.startswith(f"{toy / 'train2017' / listed[1]['file_name']} (image id {listed[1]['id']}): cannot decode")
    assert "3 of 4 images" in message


def test_trailing_bytes_are_decoded_not_refused(toy, tmp_path):
    """A file that does not end with its format's end marker is decoded in full: extra bytes after a
    complete image pass, a JPEG cut inside its data does not."""
    png = toy / "val2017" / _images(toy, "val")[0]["file_name"]
    with open(png, "ab") as f:
        f.write(b"trailing bytes")
    assert check_images(toy, "val").images == 2
    with Image.open(png) as im:
        size = im.size
        im.convert("RGB").save(tmp_path / "a.jpg", quality=90)
    jpeg = (tmp_path / "a.jpg").read_bytes()
    assert jpeg.endswith(b"\xff\xd9") and inspect_image(tmp_path / "a.jpg", *size) is None
    (tmp_path / "b.jpg").write_bytes(jpeg + b"\0" * 50)
    assert inspect_image(tmp_path / "b.jpg", *size) is None
    (tmp_path / "c.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    assert inspect_image(tmp_path / "c.jpg", *size).startswith("cut off (no JPEG end marker), cannot decode")
    assert inspect_image(tmp_path, *size).startswith("cannot read")  # a folder where a file should be


def test_incomplete_images_entry_and_missing_folder(toy):
    images = _images(toy, "val")
    del images[1]["width"]
    with pytest.raises(DataError, match=r"instances_val2017\.json: image \d+ has no 'width'"):
        check_images(toy, "val", images=images)
    shutil.rmtree(toy / "val2017")
    with pytest.raises(DataError, match="image folder not found"):
        check_images(toy, "val")


# --- the cache ---------------------------------------------------------------------------------


def test_cache_skips_unchanged_rechecks_changed_and_stays_outside_the_dataset(toy, pristine, cache):
    before = _state(toy)
    first = check_images(toy, "train")
    assert (first.images, first.cached) == (4, False)
    assert first.record is not None and first.record.parent == cache and first.record.is_file()
    second = check_images(toy, "train")
    assert second.cached and second.record == first.record
    assert _state(toy) == before  # nothing written into the dataset folder
    victim = toy / "train2017" / _images(toy, "train")[3]["file_name"]
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))  # touched: same bytes
    assert not check_images(toy, "train").cached
    assert check_images(toy, "train").cached
    _truncate(victim)  # changed: found, and a failure is not remembered
    for _ in range(2):
        with pytest.raises(DataError, match="cut off"):
            check_images(toy, "train")
    shutil.copy(pristine / "train2017" / victim.name, victim)  # repaired: checked again, then remembered
    assert not check_images(toy, "train").cached and check_images(toy, "train").cached
    ann = toy / "annotations" / "instances_val2017.json"
    assert check_images(toy, "val").cached is False and check_images(toy, "val").cached
    ann.write_text(ann.read_text() + " ")  # other annotation bytes: checked again
    assert not check_images(toy, "val").cached
    assert not check_images(toy, "val", use_cache=False).cached


def test_unwritable_cache_costs_the_skip_not_the_run(toy, tmp_path, monkeypatch, caplog):
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "not_a_folder"))
    with caplog.at_level(logging.WARNING, logger="gcrepro.data"):
        for _ in range(2):
            done = check_images(toy, "val")
            assert (done.cached, done.record) == (False, None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("cannot write the image-check record" in l and CACHE_ENV in l for l in lines)


def _check_cached(root: str) -> bool:
    return check_images(root, "train").cached


def test_concurrent_callers_check_once(toy):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        cached = pool.map(_check_cached, [str(toy)] * 3)
    assert sorted(cached) == [False, True, True]  # one checked under the lock; the others found its pass


# --- gcrepro data check ------------------------------------------------------------------------


def test_cli_data_check_summary_or_one_line_and_exit_2(toy, capsys, cache):
    from gcrepro.cli import main

    assert main(["data", "check", str(toy)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{toy}: OK\n") and "train: 4 images checked" in out and "val: 2 images checked" in out
    assert str(cache) in out
    assert main(["data", "check", str(toy), "--split", "val"]) == 0
    assert "val: 2 images unchanged since their check passed" in capsys.readouterr().out
    victim = _images(toy, "train")[0]
    (toy / "train2017" / victim["file_name"]).unlink()
    assert main(["data", "check", str(toy), "--split", "val"]) == 0  # only the split asked for
    capsys.readouterr()
    assert main(["data", "check", str(toy)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"gcrepro data check: error: {toy / 'train2017' / victim['file_name']} (image id "
                            f"{victim['id']}): file missing; 1 of 4 images of instances_train2017.json are bad "
                            "(this is the first listed)\n")
    assert main(["data", "check", str(toy / "nowhere")]) == 2
    assert capsys.readouterr().err == f"gcrepro data check: error: data folder not found: {toy / 'nowhere'}\n"


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
