"""Data: toy generator, COCO dataset, flips, samplers, loaders, bad data, describe_data."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from gcrepro.data import CocoInstances, DataError, build_loader, describe_data, ensure_toy, make_toy_dataset, set_epoch
from gcrepro.data import toy as toy_module
from gcrepro.data.sampler import GroupedBatchSampler, ShardSampler, aspect_groups
from gcrepro.data.toy import CATEGORIES, MANIFEST_NAME, read_manifest
from gcrepro.data.transforms import flip_decision

NUM_TRAIN, NUM_VAL = 40, 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_coco(root: Path, images: list[dict], annotations: list[dict], split: str = "train") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(exist_ok=True)
    categories = [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}]
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _copy_image(toy: Path, root: Path, name: str, split: str = "train") -> dict:
    src = sorted((toy / "train2017").glob("*.png"))[0]
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    shutil.copy(src, root / f"{split}2017" / name)
    from PIL import Image

    w, h = Image.open(src).size
    return {"file_name": name, "width": w, "height": h}


# --- toy generator -----------------------------------------------------------------------------


def test_toy_same_seed_identical_bytes_different_seed_differs(tmp_path):
    a = _files(make_toy_dataset(tmp_path / "a", seed=5, num_train=6, num_val=3))
    b = _files(make_toy_dataset(tmp_path / "b", seed=5, num_train=6, num_val=3))
    c = _files(make_toy_dataset(tmp_path / "c", seed=6, num_train=6, num_val=3))
    assert a.keys() == b.keys() and len(a) == 6 + 3 + 3  # images, 2 annotation files, manifest
    assert all(a[k] == b[k] for k in a)
    ann = "annotations/instances_train2017.json"
    assert a[ann] != c[ann]
    assert a["train2017/000000000001.png"] != c["train2017/000000000001.png"]


def test_toy_is_valid_coco_with_masks_matching_boxes(toy):
    coco = COCO(str(toy / "annotations" / "instances_train2017.json"))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == CATEGORIES
    kinds = Counter()
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        info = coco.imgs[ann["image_id"]]
        assert mask.shape == (info["height"], info["width"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum() > 0 and ann["iscrowd"] == 0
        kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
    assert kinds["polygon"] > 0 and kinds["rle"] > 0
    orientation = {info["width"] >= info["height"] for info in coco.imgs.values()}
    assert orientation == {True, False}  # landscape and portrait: aspect grouping matters
    assert len(coco.imgs) == NUM_TRAIN and min(info["height"] for info in coco.imgs.values()) == 160
    assert {a["category_id"] for a in coco.anns.values()} == set(CATEGORIES)  # every shape occurs


def test_toy_masks_are_the_visible_drawn_pixels(toy):
    """Occlusion: masks of one image are disjoint (later shapes cut earlier ones)."""
    coco = COCO(str(toy / "annotations" / "instances_train2017.json"))
    overlapping_images = 0
    for image_id in coco.imgs:
        anns = coco.imgToAnns[image_id]
        if len(anns) < 2:
            continue
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(np.int64)
        assert masks.sum(0).max() <= 1
        overlapping_images += 1
    assert overlapping_images > 0


def test_ensure_toy_reuses_rebuilds_and_refuses_foreign_folder(tmp_path):
    small = functools.partial(ensure_toy, num_train=4, num_val=2)
    root = small(tmp_path / "toy", seed=0)
    manifest = root / MANIFEST_NAME
    stamp = manifest.stat().st_mtime_ns
    assert small(tmp_path / "toy", seed=0) == root and manifest.stat().st_mtime_ns == stamp  # reused
    assert small(tmp_path / "toy", seed=1) == root and read_manifest(root)["seed"] == 1  # other seed: rebuilt
    (root / "train2017" / "000000000002.png").unlink()  # incomplete: rebuilt
    small(tmp_path / "toy", seed=1)
    assert (root / "train2017" / "000000000002.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a gcrepro toy dataset"):
        small(foreign)
    with pytest.raises(DataError, match="not a gcrepro toy dataset"):
        make_toy_dataset(foreign, num_train=2, num_val=1)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    make_toy_dataset(root, seed=1, num_train=2, num_val=1)  # rewriting a toy folder leaves no stale image
    assert len(list((root / "train2017").iterdir())) == 2


def _ensure_small(path: str) -> str:
    return str(ensure_toy(path, num_train=12, num_val=2))


def test_ensure_toy_concurrent_callers_get_one_complete_set(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(3) as pool:
        roots = pool.map(_ensure_small, [str(tmp_path / "toy")] * 3)
    assert roots == [str(tmp_path / "toy")] * 3 and read_manifest(tmp_path / "toy")["num_train"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary folders left


def test_cli_data_toy_writes_and_reports(tmp_path, capsys):
    from gcrepro.data import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "toy", "--out", str(tmp_path / "t"), "--seed", "2", "--num-train", "3", "--num-val", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "t") in out and "3 images" in out and "2 images" in out
    assert read_manifest(tmp_path / "t")["seed"] == 2


# --- dataset -----------------------------------------------------------------------------------


def test_dataset_outputs_and_label_mapping(toy):
    ds = CocoInstances(toy, "val", train=False)
    assert ds.num_classes == len(CATEGORIES) + 1 and ds.class_names[0] == "__background__"
    assert ds.label_to_cat_id == {1: 1, 2: 2, 3: 3, 4: 5, 5: 7}  # sorted COCO ids -> 1..K
    assert all(ds.cat_id_to_label[c] == label for label, c in ds.label_to_cat_id.items())
    assert [ds.class_names[ds.cat_id_to_label[c]] for c in CATEGORIES] == list(CATEGORIES.values())
    assert len(ds) == NUM_VAL  # evaluation keeps every image
    for index in range(len(ds)):
        image, target = ds[index]
        info = ds.coco.imgs[target["image_id"]]
        assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
        assert 0.0 <= image.min() and image.max() <= 1.0
        anns = ds.coco.imgToAnns[target["image_id"]]
        k = len(anns)
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (k, 4)
        assert target["labels"].dtype == torch.int64 and target["masks"].dtype == torch.uint8
        assert target["masks"].shape == (k, info["height"], info["width"])
        assert [ds.label_to_cat_id[int(l)] for l in target["labels"]] == [a["category_id"] for a in anns]
        for box, mask, ann in zip(target["boxes"], target["masks"], anns):
            x, y, w, h = ann["bbox"]
            assert box.tolist() == [x, y, x + w, y + h]
            assert torch.equal(mask, torch.from_numpy(ds.coco.annToMask(ann)))


def test_decode_segmentation_polygon_and_both_rle_forms():
    from pycocotools import mask as mask_utils

    from gcrepro.data.coco import decode_segmentation

    polygon = [[2.0, 1.0, 12.5, 3.0, 6.0, 9.5], [14.0, 2.0, 18.0, 2.0, 18.0, 8.0, 14.0, 8.0]]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 11, 20)))
    assert expected.sum() > 20 and np.array_equal(decode_segmentation(polygon, 11, 20), expected)
    compressed = mask_utils.encode(np.asfortranarray(expected))
    compressed["counts"] = compressed["counts"].decode("ascii")  # as stored in JSON
    assert np.array_equal(decode_segmentation(compressed, 11, 20), expected)
    column_major = expected.flatten(order="F")  # uncompressed RLE: run lengths, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], column_major, [1 - column_major[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    assert np.array_equal(decode_segmentation({"size": [11, 20], "counts": counts}, 11, 20), expected)


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]


def test_flip_mirrors_image_boxes_and_masks(toy):
    plain = CocoInstances(toy, "train", train=True, flip_prob=0.0)
    flipped = CocoInstances(toy, "train", train=True, flip_prob=1.0)
    image, target = plain[3]
    image_f, target_f = flipped[3]
    width = image.shape[-1]
    assert torch.equal(image_f, image.flip(-1)) and torch.equal(target_f["masks"], target["masks"].flip(-1))
    boxes = target["boxes"]
    expected = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    assert torch.equal(target_f["boxes"], expected)
    for box, mask in zip(target_f["boxes"], target_f["masks"]):  # the box is still the mask's extent
        assert box.tolist() == _mask_box(mask)
    assert torch.equal(target_f["labels"], target["labels"]) and target_f["image_id"] == target["image_id"]


def test_flip_draws_depend_on_seed_epoch_index_only(toy):
    def draws(seed: int, epoch: int) -> list[bool]:
        return [flip_decision(seed=seed, epoch=epoch, index=i, prob=0.5) for i in range(200)]

    torch.manual_seed(123)
    first = draws(0, 1)
    torch.manual_seed(456)  # the global RNG plays no part
    assert draws(0, 1) == first
    assert draws(0, 2) != first and draws(1, 1) != first
    assert 0.35 < sum(first) / len(first) < 0.65
    ds = CocoInstances(toy, "train", train=True, seed=0)  # the dataset applies exactly these draws
    ds.set_epoch(1)
    plain = CocoInstances(toy, "train", train=True, flip_prob=0.0)
    for i in range(8):
        assert torch.equal(ds[i][0], plain[i][0].flip(-1) if first[i] else plain[i][0])


def test_loader_stream_same_for_any_worker_count(toy):
    def stream(num_workers: int) -> list[tuple]:
        ds = CocoInstances(toy, "train", train=True)
        loader = build_loader(ds, batch_size=2, train=True, num_workers=num_workers, seed=7, distributed=False)
        set_epoch(loader, 3)
        return [(t["image_id"], float(i.sum()), t["boxes"][0, 0].item()) for images, targets in loader for i, t in zip(images, targets)]

    assert stream(0) == stream(2)


def test_training_skips_images_without_usable_annotations(toy, tmp_path, caplog):
    good = {"id": 1, "image_id": 10, "category_id": 9, "bbox": [5, 5, 20, 30], "area": 600, "iscrowd": 0, "segmentation": [[5, 5, 25, 5, 25, 35]]}
    crowd = dict(good, id=2, image_id=11, iscrowd=1)
    degenerate = dict(good, id=3, image_id=12, bbox=[5, 5, 0.5, 30])
    images = [dict(_copy_image(toy, tmp_path, f"{i}.png"), id=i) for i in (10, 11, 12, 13)]  # 13: no annotation
    ann_file = _write_coco(tmp_path, images, [good, crowd, degenerate])
    with caplog.at_level(logging.WARNING, logger="gcrepro.data"):
        train = CocoInstances(tmp_path, "train", train=True)
    assert train.ids == [10]
    degenerate_lines = [r.getMessage() for r in caplog.records]
    assert len(degenerate_lines) == 1 and "\n" not in degenerate_lines[0]
    assert "annotation 3" in degenerate_lines[0] and str(ann_file) in degenerate_lines[0]
    evaluation = CocoInstances(tmp_path, "train", train=False)
    assert evaluation.ids == [10, 11, 12, 13]
    assert [len(evaluation[i][1]["labels"]) for i in range(4)] == [1, 0, 0, 0]
    assert evaluation[0][1]["labels"].tolist() == [2]  # category 9 -> label 2


# --- samplers and loaders ----------------------------------------------------------------------


def test_grouped_batches_are_homogeneous_and_cover_the_epoch(toy):
    ds = CocoInstances(toy, "train", train=True)
    loader = build_loader(ds, batch_size=4, train=True, num_workers=0, seed=0, distributed=False)
    set_epoch(loader, 0)
    seen, batches = [], 0
    for images, targets in loader:
        assert len(images) == 4 and len({img.shape[2] >= img.shape[1] for img in images}) == 1
        seen += [t["image_id"] for t in targets]
        batches += 1
    assert batches == len(loader) and set(seen) == set(ds.ids)


@pytest.mark.parametrize("n,batch_size,world", [(48, 2, 3), (37, 2, 4), (5, 4, 2)])
def test_distributed_sampler_disjoint_covering_deterministic(n, batch_size, world):
    groups = aspect_groups([1.5 if i % 3 else 0.75 for i in range(n)])
    samplers = [GroupedBatchSampler(groups, batch_size=batch_size, num_replicas=world, rank=r, seed=1) for r in range(world)]
    per_rank = [s.epoch_batches() for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])  # equal lengths
    slots = [i for batches in per_rank for batch in batches for i in batch]
    assert set(slots) == set(range(n))  # covering
    assert len(slots) - n == len(samplers[0]) * batch_size * world - n  # repeats are padding only
    if n % (batch_size * world) == 0 and all(c % (batch_size * world) == 0 for c in Counter(groups).values()):
        assert len(slots) == n  # nothing to pad: the ranks' data are disjoint
    for batches in per_rank:
        assert all(len({groups[i] for i in batch}) == 1 and len(batch) == batch_size for batch in batches)
    again = GroupedBatchSampler(groups, batch_size=batch_size, num_replicas=world, rank=0, seed=1)
    assert again.epoch_batches() == per_rank[0]  # deterministic for a seed
    again.set_epoch(1)
    if n > batch_size * world:
        assert again.epoch_batches() != per_rank[0]  # a new order each epoch
    again.set_epoch(1, start_iter=2)
    assert list(again) == again.epoch_batches()[2:]  # resume mid-epoch


def test_ranks_together_take_the_single_process_batches():
    """World W x batch B and 1 process x batch W*B see the same global batches (distributed equivalence)."""
    groups = aspect_groups([1.5 if i % 3 else 0.75 for i in range(30)])
    single = GroupedBatchSampler(groups, batch_size=4, seed=3).epoch_batches()
    ranks = [GroupedBatchSampler(groups, batch_size=2, num_replicas=2, rank=r, seed=3).epoch_batches() for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single


def test_eval_loader_shards_cover_every_image_once(toy):
    ds = CocoInstances(toy, "val", train=False)
    seen = []
    for rank in range(3):
        loader = build_loader(ds, batch_size=1, train=False, num_workers=0, seed=0, distributed=True, rank=rank, world_size=3)
        seen += [t["image_id"] for _, targets in loader for t in targets]
    assert sorted(seen) == sorted(ds.ids) and len(seen) == len(ds)
    assert list(ShardSampler(7, num_replicas=3, rank=1)) == [1, 4]
    with pytest.raises(RuntimeError, match="process group"):
        build_loader(ds, batch_size=1, train=False, num_workers=0, seed=0, distributed=True)


# --- bad data ----------------------------------------------------------------------------------


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_image_file_names_path_and_image_id(toy, tmp_path):
    images = [dict(_copy_image(toy, tmp_path, "a.png", "val"), id=1), {"id": 2, "file_name": "gone.png", "width": 9, "height": 9}]
    _write_coco(tmp_path, images, [], "val")
    ds = CocoInstances(tmp_path, "val", train=False)
    ds[0]
    with pytest.raises(DataError) as excinfo:
        ds[1]
    message = _one_line(excinfo)
    assert str(tmp_path / "val2017" / "gone.png") in message and "image id 2" in message


def test_invalid_json_names_file_line_and_column(tmp_path):
    ann_file = _write_coco(tmp_path, [], [])
    ann_file.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DataError) as excinfo:
        CocoInstances(tmp_path, "train")
    message = _one_line(excinfo)
    assert str(ann_file) in message and "line 2, column 18" in message


def test_missing_annotation_file_and_bad_structure(tmp_path):
    with pytest.raises(DataError) as excinfo:
        CocoInstances(tmp_path, "val")
    assert str(tmp_path / "annotations" / "instances_val2017.json") in _one_line(excinfo)
    ann_file = _write_coco(tmp_path, [], [])
    ann_file.write_text('{"images": []}')
    with pytest.raises(DataError, match="missing list 'annotations'"):
        CocoInstances(tmp_path, "train")
    no_mask = {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0}
    _write_coco(tmp_path, [{"id": 1, "file_name": "x.png", "width": 9, "height": 9}], [no_mask])
    with pytest.raises(DataError, match="annotation 4 has no 'segmentation'"):
        CocoInstances(tmp_path, "train")
    _write_coco(tmp_path, [{"id": 1, "file_name": "x.png", "width": 9}], [dict(no_mask, segmentation=[[0, 0, 5, 0, 5, 5]])])
    with pytest.raises(DataError, match="image 1 has no 'height'"):
        CocoInstances(tmp_path, "train")


# --- describe_data -----------------------------------------------------------------------------


def test_describe_data(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("GCREPRO_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(toy_module, "ensure_toy", functools.partial(ensure_toy, num_train=3, num_val=2))
    made = describe_data(None)
    assert (Path(made.root), made.kind, made.val_images) == (tmp_path / "data" / "toy", "toy", 2)
    assert read_manifest(made.root) is not None
    spec = describe_data(toy)
    assert (spec.root, spec.kind, spec.num_classes) == (str(toy), "toy", len(CATEGORIES) + 1)
    coco = tmp_path / "coco"
    shutil.copytree(toy, coco)
    (coco / MANIFEST_NAME).unlink()
    # The COCO 2017 layout alone does not make a dataset COCO: these are other categories and images.
    custom = describe_data(str(coco))
    assert (custom.kind, custom.name, custom.val_sha256) == ("custom", "coco", spec.val_sha256)
    (coco / "annotations" / "instances_train2017.json").unlink()
    assert describe_data(coco, splits=("val",)).kind == "custom"
    with pytest.raises(DataError, match="instances_train2017.json"):
        describe_data(coco)
    with pytest.raises(DataError, match="data folder not found"):
        describe_data(tmp_path / "nowhere")
    (coco / "annotations" / "instances_val2017.json").write_text('{"images": [], "categories": []}')
    with pytest.raises(DataError, match="'categories' is empty"):
        describe_data(coco, splits=("val",))


class _SigintDisposition(torch.utils.data.Dataset):
    """Each item: whether SIGINT is ignored in the process that loads it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        import signal

        return torch.zeros(3, 4, 4), {"ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}

    def aspect_ratios(self) -> list[float]:
        return [1.0, 1.0]


def test_loader_workers_leave_ctrl_c_to_the_main_process() -> None:
    # a worker that died of the terminal's SIGINT first made the main process fail ("worker exited unexpectedly")
    for train in (True, False):
        loader = build_loader(_SigintDisposition(), batch_size=1, train=train, num_workers=1, seed=0, distributed=False)
        if train:
            set_epoch(loader, 0)
        assert all(t["ignored"] for _, targets in loader for t in targets)
