"""The toy "context" set: objects identical across classes, the cue clear of every box + M, the class set by
the cue, valid COCO labelled toy, deterministic; ``gcrepro data toy --kind``."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from gcrepro.data import CocoInstances, describe_data, ensure_toy, make_toy_dataset
from gcrepro.data import toy_context
from gcrepro.data.toy import read_manifest

NUM_TRAIN, NUM_VAL = 24, 6


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("ctx"), seed=3, num_train=NUM_TRAIN, num_val=NUM_VAL, kind="context")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(root: Path, split: str = "train") -> COCO:
    return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_same_draw_for_every_class_differs_only_inside_the_cue(seed):
    drawn = {k: toy_context.render_context_image(np.random.default_rng(seed), 160, 240, category_id=k)
             for k in toy_context.CATEGORIES}
    first = drawn[1]
    x0, y0, x1, y1 = first.cue_box
    outside = np.ones(first.pixels.shape[:2], bool)
    outside[y0:y1 + 1, x0:x1 + 1] = False
    for k, image in drawn.items():
        assert image.category_id == k and image.cue_box == first.cue_box
        assert np.array_equal(image.pixels[outside], first.pixels[outside])  # every pixel but the cue's
        assert [d.box for d in image.discs] == [d.box for d in first.discs]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(image.discs, first.discs))
    inside = [drawn[k].pixels[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).mean(0) for k in toy_context.CATEGORIES]
    assert min(np.abs(a - b).sum() for i, a in enumerate(inside) for b in inside[i + 1:]) > 100  # the cue does differ


def test_identical_discs_have_identical_pixels_up_to_noise():
    image = toy_context.render_context_image(np.random.default_rng(5), 160, 160)
    colours = [image.pixels[d.mask].reshape(-1, 3).mean(0) for d in image.discs]
    for colour in colours:  # one colour for every disc of every class; pixel noise sd 6
        assert np.abs(colour - np.asarray(toy_context.DISC_COLOUR)).max() < 3


def test_every_box_grown_by_the_margin_is_clear_of_the_cue_and_the_cue_sets_the_class(context):
    for split in ("train", "val"):
        coco = _coco(context, split)
        for image_id, info in coco.imgs.items():
            cue = info["gcrepro_cue"]
            cx, cy, cw, ch = cue["bbox"]
            cue_box = (int(cx), int(cy), int(cx + cw) - 1, int(cy + ch) - 1)
            margin = toy_context.margin_pixels(info["height"], info["width"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            assert anns, f"image {image_id} has no object"
            for ann in anns:
                x, y, w, h = (int(v) for v in ann["bbox"])
                grown = (x - margin, y - margin, x + w - 1 + margin, y + h - 1 + margin)
                assert not toy_context.boxes_overlap(grown, cue_box)
                assert ann["category_id"] == cue["category_id"]
            assert cue["colour"] == toy_context.CUE_COLOURS[cue["category_id"]][0]


def test_valid_coco_read_by_the_project_reader_and_labelled_toy(context):
    coco = _coco(context)
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == toy_context.CATEGORIES
    classes = Counter()
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum() > 0 and ann["iscrowd"] == 0
        classes[ann["category_id"]] += 1
    assert set(classes) == set(toy_context.CATEGORIES)
    dataset = CocoInstances(context, "train", train=True)
    _, target = dataset[0]
    assert target["boxes"].shape[1] == 4 and len(target["labels"]) == len(target["masks"]) > 0
    spec = describe_data(context)
    assert spec.kind == "toy" and spec.num_classes == len(toy_context.CATEGORIES) + 1
    assert read_manifest(context)["generator"] == "gcrepro.data.toy_context"


def test_deterministic_per_seed(tmp_path, context):
    again = _files(make_toy_dataset(tmp_path / "a", seed=3, num_train=NUM_TRAIN, num_val=NUM_VAL, kind="context"))
    assert again == _files(context)
    other = _files(make_toy_dataset(tmp_path / "b", seed=4, num_train=NUM_TRAIN, num_val=NUM_VAL, kind="context"))
    ann = "annotations/instances_train2017.json"
    assert other[ann] != again[ann] and other["train2017/000000000001.png"] != again["train2017/000000000001.png"]


def test_a_context_set_is_not_taken_for_the_shapes_set(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", seed=0, num_train=3, num_val=2, kind="context")
    ensure_toy(root, seed=0, num_train=3, num_val=2)  # same sizes, other generator: rebuilt as shapes
    assert read_manifest(root)["generator"] == "gcrepro.data.toy"
    assert "gcrepro_cue" not in _coco(root).imgs[1]


def test_cli_kind_context_and_a_bad_kind(tmp_path, capsys):
    from gcrepro.cli import main

    assert main(["data", "toy", "--kind", "context", "--out", str(tmp_path / "c"), "--num-train", "3", "--num-val", "2"]) == 0
    assert read_manifest(tmp_path / "c")["generator"] == "gcrepro.data.toy_context"
    assert "toy context dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["data", "toy", "--kind", "texture", "--out", str(tmp_path / "t")])
    assert exc.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and "'texture'" in error[0] and "shapes" in error[0] and "context" in error[0]
    assert not (tmp_path / "t").exists()


def test_a_bad_kind_through_the_api_names_it():
    with pytest.raises(ValueError, match=re.escape("toy kind 'texture': expected one of shapes|context")):
        make_toy_dataset("/nonexistent/never-written", kind="texture")
