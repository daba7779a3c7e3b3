"""What a dataset IS, read from its val annotations: ``describe_data(data) -> DataSpec``.

The kind decides how a run's numbers may be labelled (:func:`gcrepro.runspec.label_of`):

- ``toy``: the gcrepro toy set (its manifest, ``gcrepro_toy.json``);
- ``coco``: COCO val2017 itself: exactly the 5000 val2017 image ids (checked by a fingerprint of the
  sorted ids) and the 80 COCO category ids. Only such a val split is ever compared with the paper;
- ``coco-subset``: the 80 COCO categories, but not the whole val2017 (a slice, or other COCO images);
- ``custom``: anything else, named by its folder.

The folder layout says nothing about this: a 200-image set in the COCO 2017 layout is ``custom``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from gcrepro.data.coco import annotation_file, image_folder
from gcrepro.data.errors import DataError

DATA_KINDS = ("toy", "coco", "coco-subset", "custom")

# COCO 2017 val: 5000 images. The fingerprint is sha256 of the sorted image ids joined by ","
# (e.g. "139,285,632,...,581781"); computed from two independent published val2017 image lists.
COCO_VAL2017_IMAGES = 5000
COCO_VAL2017_IDS_SHA256 = "650f780b44aa5a9b65c66ecb0a7ea5345919bb427ea4e6ef8dd42bd3083351b8"
# The 80 COCO category ids: 1..90 without the 10 ids the 2014 paper's list dropped.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


@dataclass(frozen=True)
class DataSpec:
    """A dataset root and what its val split is."""

    root: str  # absolute folder (COCO 2017 layout)
    kind: str  # one of DATA_KINDS
    name: str  # the folder's name, for labels ("custom: shapes200")
    num_classes: int  # val categories + background
    val_images: int
    val_ids_sha256: str  # sha256 of the sorted val image ids joined by ","
    val_sha256: str  # sha256 of the val annotation file's bytes

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"DataSpec kind={self.kind!r}: expected one of {DATA_KINDS}")


def ids_fingerprint(image_ids: list[int]) -> str:
    return hashlib.sha256(",".join(str(i) for i in sorted(image_ids)).encode()).hexdigest()


def classify(*, is_toy: bool, image_ids: list[int], category_ids: list[int]) -> str:
    """The data kind (see the module docstring) from the val split's ids."""
    if is_toy:
        return "toy"
    if sorted(category_ids) != list(COCO_CATEGORY_IDS):
        return "custom"
    if len(image_ids) == COCO_VAL2017_IMAGES and ids_fingerprint(image_ids) == COCO_VAL2017_IDS_SHA256:
        return "coco"
    return "coco-subset"


def _check_layout(root: Path, splits: tuple[str, ...]) -> None:
    for split in splits:
        if not annotation_file(root, split).is_file():
            raise DataError(
                f"{root}: missing {annotation_file(root, split).relative_to(root)} "
                f"(COCO 2017 layout: annotations/instances_{{train,val}}2017.json, {{train,val}}2017/)"
            )
        if not image_folder(root, split).is_dir():
            raise DataError(f"{root}: missing image folder {split}2017/ (COCO 2017 layout)")


def describe_data(data: str | Path | None, *, splits: tuple[str, ...] = ("train", "val")) -> DataSpec:
    """The DataSpec of ``data``: a folder in the COCO 2017 layout, or None (the built-in toy set,
    made on first use at ``gcrepro.paths.default_toy_dir()``; ``"toy"`` too when no folder has that name).

    A missing folder, file or split raises ``DataError`` naming it.
    """
    from gcrepro.data.toy import ensure_toy, read_manifest

    if data is None or (str(data) == "toy" and not Path("toy").is_dir()):
        root = ensure_toy()
    else:
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"data folder not found: {root} (expected the COCO 2017 layout or a toy dataset)")
    _check_layout(root, splits)
    ann = annotation_file(root, "val")
    raw = ann.read_bytes()
    try:
        val = json.loads(raw)
        image_ids = [int(img["id"]) for img in val["images"]]
        category_ids = [int(cat["id"]) for cat in val["categories"]]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{ann}: not a COCO instances file ({type(err).__name__}: {err}); "
                        "expected 'images' and 'categories' lists with ids") from None
    if not category_ids:
        raise DataError(f"{ann}: 'categories' is empty")
    kind = classify(is_toy=read_manifest(root) is not None, image_ids=image_ids, category_ids=category_ids)
    return DataSpec(root=str(root), kind=kind, name=root.name, num_classes=len(category_ids) + 1,
                    val_images=len(image_ids), val_ids_sha256=ids_fingerprint(image_ids),
                    val_sha256=hashlib.sha256(raw).hexdigest())
