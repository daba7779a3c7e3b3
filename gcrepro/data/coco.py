"""COCO instances dataset (COCO 2017 layout), read with pycocotools.

``CocoInstances(root, split, train)`` reads ``root/annotations/instances_{split}2017.json`` and the
images in ``root/{split}2017/`` and yields ``(image, target)``:

- ``image``: float Tensor [3, H, W] in 0..1, RGB, at the file's own resolution;
- ``target``: ``boxes`` float [K, 4] xyxy in absolute pixels, ``labels`` int64 [K] contiguous
  1..num_categories (0 is background), ``masks`` uint8 [K, H, W] (polygons or RLE decoded by
  pycocotools), ``image_id`` int (the COCO image id).

The ONLY augmentation here is the training horizontal flip (p = ``flip_prob``, SPEC §4). Keep-ratio
resize to (1333, 800) (toy profile: smaller), ImageNet normalisation and padding to a multiple of
32 happen INSIDE the model (torchvision ``GeneralizedRCNNTransform``): do not resize here, or
images get resized twice.

Category ids: COCO ids are sorted and mapped to labels 1..K (``cat_id_to_label``), and back with
``label_to_cat_id`` when writing results; ``num_classes`` = K + 1 (background included).

Filtering, as upstream mmdetection / torchvision references do: crowd annotations are dropped
(from targets; COCOeval still reads them from the JSON), degenerate boxes (w or h < 1 pixel) are
dropped with one warning line each naming the annotation id and the file, and in training images
left without annotations are skipped. Evaluation (``train=False``) keeps every image. Annotations
whose image_id is not in ``images`` are ignored with one warning line (their count and the first).
A training-mode dataset with no usable image is a ``DataError`` (``check_split``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from gcrepro.data.errors import DataError
from gcrepro.data.serialized import SerializedList
from gcrepro.data.split_check import check_split
from gcrepro.data.transforms import flip_decision, hflip

logger = logging.getLogger("gcrepro.data")

SPLITS = ("train", "val")


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def image_folder(root: Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> uint8 mask [H, W]
    (what ``COCO.annToMask`` does, without needing the COCO object)."""
    if isinstance(segmentation, list):  # polygons: rasterise each, then union
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = segmentation
    return mask_utils.decode(rle)


def read_instances(ann_file: Path, raw: bytes) -> dict:
    """The COCO instances dict of ``ann_file`` (its bytes ``raw``); raises ``DataError`` (one line) for
    invalid JSON (with line and column) or a file that is not a COCO instances file."""
    try:
        dataset = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{ann_file}: not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(dataset, dict):
        raise DataError(f"{ann_file}: not a COCO instances file: top level is a {type(dataset).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DataError(f"{ann_file}: not a COCO instances file: missing list {key!r}")
    return dataset


def read_annotation_file(ann_file: Path | str) -> bytes:
    """The bytes of ``ann_file``; ``DataError`` naming it when it is not there."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    return ann_file.read_bytes()


def image_fields_missing(ann_file: Path, info: dict) -> str:
    """The one-line error for an ``images`` entry without file_name, height or width ("" when complete)."""
    missing = [k for k in ("file_name", "height", "width") if k not in info]
    if not missing:
        return ""
    return f"{ann_file}: image {info.get('id')} has no {missing[0]!r} (COCO 'images' entries need file_name, height, width)"


def load_coco(ann_file: Path | str) -> COCO:
    """A pycocotools ``COCO`` for ``ann_file``; raises ``DataError`` (one line) for a missing file,
    invalid JSON (with line and column) or a file that is not a COCO instances file."""
    ann_file = Path(ann_file)
    coco = COCO()
    coco.dataset = read_instances(ann_file, read_annotation_file(ann_file))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


class CocoInstances(Dataset):
    """COCO instances in the COCO 2017 layout (see the module docstring).

    Args:
        root: folder holding ``annotations/`` and ``{split}2017/``.
        split: ``"train"`` or ``"val"``.
        train: training mode (skip images without annotations, random flip); default: split == "train".
        flip_prob: horizontal flip probability in training (SPEC §4: 0.5).
        seed: seed of the flip draws, which depend only on (seed, epoch, index); see ``set_epoch``.
    """

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        train: bool | None = None,
        flip_prob: float = 0.5,
        *,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.root = Path(root)
        self.split = split
        self.train = (split == "train") if train is None else bool(train)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.epoch = 0
        self.ann_file = annotation_file(self.root, split)
        self.image_dir = image_folder(self.root, split)
        self.coco = load_coco(self.ann_file)
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir} (COCO 2017 layout: ROOT/{split}2017/)")

        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise DataError(f"{self.ann_file}: 'categories' is empty")
        self.cat_id_to_label: dict[int, int] = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
        self.label_to_cat_id: dict[int, int] = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.class_names: list[str] = ["__background__"] + [self.coco.cats[c]["name"] for c in cat_ids]
        self.num_classes = len(cat_ids) + 1  # background included
        self._warn_orphans()

        records = []  # one per dataset item: image info + usable annotations, plain data only
        for image_id in sorted(self.coco.imgs):
            anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a)]
            if self.train and not anns:
                continue  # as upstream: training skips images without (usable) annotations
            info = self.coco.imgs[image_id]
            missing = image_fields_missing(self.ann_file, info)
            if missing:
                raise DataError(missing)
            records.append({
                "id": image_id,
                "file_name": info["file_name"],
                "height": info["height"],
                "width": info["width"],
                "anns": [{k: a[k] for k in ("id", "bbox", "category_id", "segmentation")} for a in anns],
            })
        self.ids: list[int] = [r["id"] for r in records]  # dataset index -> COCO image id
        self.num_annotations = sum(len(r["anns"]) for r in records)  # usable ones, on the items
        self._aspect_ratios = [r["width"] / r["height"] for r in records]
        self._records = SerializedList(records)  # workers read this, never self.coco (see serialized.py)
        if self.train:
            check_split(self, purpose="train")

    def _warn_orphans(self) -> None:
        """One warning line for annotations whose image_id is not in 'images' (no item reads them)."""
        orphans = [a for a in self.coco.dataset["annotations"] if a.get("image_id") not in self.coco.imgs]
        if orphans:
            logger.warning(
                "%s: ignoring %d annotation(s) whose image_id is not in 'images' (first: annotation %s, image id %r)",
                self.ann_file, len(orphans), orphans[0].get("id"), orphans[0].get("image_id"),
            )

    def _usable(self, ann: dict) -> bool:
        if ann.get("category_id") not in self.cat_id_to_label:
            raise DataError(
                f"{self.ann_file}: annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                f"which is not in 'categories' (ids {sorted(self.cat_id_to_label)})"
            )
        if ann.get("iscrowd", 0):
            return False
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DataError(f"{self.ann_file}: annotation {ann.get('id')} has bbox {bbox!r}, expected [x, y, w, h]")
        if "segmentation" not in ann:
            raise DataError(f"{self.ann_file}: annotation {ann.get('id')} has no 'segmentation' (Mask R-CNN needs instance masks)")
        _, _, w, h = bbox
        if w < 1 or h < 1:
            logger.warning(
                "%s: dropping annotation %s (image %s): degenerate box w=%g h=%g, expected w and h >= 1 pixel",
                self.ann_file, ann.get("id"), ann.get("image_id"), w, h,
            )
            return False
        return True

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the flip draws of ``epoch`` (call before iterating; the loader helper does)."""
        self.epoch = int(epoch)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every item, from the annotation file (no image decoding)."""
        return list(self._aspect_ratios)

    def _read_image(self, info: dict) -> np.ndarray:
        """RGB uint8 [H, W, 3] (Pillow: torchvision.io's decoders are deprecated since 0.29)."""
        image_id = info["id"]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DataError(f"image file missing: {path} (image id {image_id}, listed in {self.ann_file})")
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))  # uint8 [H, W, 3]
        except OSError as e:  # includes PIL.UnidentifiedImageError and truncated files
            raise DataError(f"cannot decode image {path} (image id {image_id}): {e}") from None
        if pixels.shape[:2] != (info["height"], info["width"]):
            raise DataError(
                f"{path} (image id {image_id}) is {pixels.shape[1]}x{pixels.shape[0]} pixels but "
                f"{self.ann_file} says {info['width']}x{info['height']}"
            )
        return pixels

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        record = self._records[index]
        image_id, anns = record["id"], record["anns"]
        pixels = self._read_image(record)  # uint8 [H, W, 3]
        height, width = pixels.shape[:2]

        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)  # [K, 4] xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
        labels = [self.cat_id_to_label[a["category_id"]] for a in anns]
        if anns:
            masks = np.stack([decode_segmentation(a["segmentation"], height, width) for a in anns])  # uint8 [K, H, W]
        else:
            masks = np.zeros((0, height, width), dtype=np.uint8)
        if self.train and flip_decision(seed=self.seed, epoch=self.epoch, index=index, prob=self.flip_prob):
            pixels, boxes, masks = hflip(pixels, boxes, masks)

        # numpy until here: tiny per-image torch ops would start intra-op threads for every image
        image = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # [3, H, W]
        np.divide(image, 255, out=image)  # 0..1
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes)),  # float32 [K, 4] xyxy
            "labels": torch.tensor(labels, dtype=torch.int64),  # [K]
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),  # uint8 [K, H, W]
            "image_id": int(image_id),
        }
        return torch.from_numpy(image), target

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (
            f"CocoInstances({self.root}, split={self.split!r}, {mode}, {len(self)} images, "
            f"{self.num_classes - 1} categories)"
        )
