"""A split fit for its purpose: ``check_split(dataset, purpose="train" | "eval")``.

Without it the failures are late or silent: an empty training split dies inside the sampler with a
traceback, and a val split with nothing to evaluate gives COCOeval nothing to score, which ends as a
box AP of 0.0 in metrics.json (a wrong number, not an error). ``CocoInstances`` in training mode runs
the "train" check itself; the evaluation entry points call the "eval" check before inference (not
the dataset: attention maps and demos read val images without needing annotations).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gcrepro.data.errors import DataError

if TYPE_CHECKING:
    from gcrepro.data.coco import CocoInstances

PURPOSES = ("train", "eval")


def check_split(dataset: CocoInstances, *, purpose: str) -> None:
    """Raise ``DataError`` (one line naming the annotation file) when ``dataset`` cannot serve ``purpose``:

    - "train": no image with a usable annotation (not crowd, box at least 1x1 pixel);
    - "eval": no images, or no usable annotation on them (nothing to evaluate).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    listed = len(dataset.coco.imgs)
    if purpose == "train" and len(dataset) == 0:
        raise DataError(
            f"{dataset.ann_file}: no training image: none of its {listed} images has a usable annotation "
            "(not crowd, box at least 1x1 pixel); training needs at least one"
        )
    if purpose == "eval" and listed == 0:
        raise DataError(f"{dataset.ann_file}: 'images' is empty; nothing to evaluate")
    if purpose == "eval" and dataset.num_annotations == 0:
        raise DataError(
            f"{dataset.ann_file}: none of its {listed} images has a usable annotation (not crowd, box at least "
            "1x1 pixel); nothing to evaluate (COCOeval would report a meaningless AP)"
        )
