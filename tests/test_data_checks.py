"""Data checked before use: DataLoader worker errors that keep the file name."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from gcrepro.data import CocoInstances, DataError, build_loader, make_toy_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("pristine"), num_train=4, num_val=2, image_size=64)


@pytest.fixture
def toy(pristine, tmp_path) -> Path:
    """A fresh copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "toy"))


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
