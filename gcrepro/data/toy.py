"""Synthetic COCO-format instance-segmentation dataset ("toy"): the embedded default data.

Layout is COCO 2017's, so every reader of real COCO reads it unchanged::

    DIR/annotations/instances_{train,val}2017.json
    DIR/{train,val}2017/000000000001.png ...
    DIR/gcrepro_toy.json            # manifest, written last (atomically): marks a complete set

Content (generator version ``TOY_VERSION``):

- 5 shape categories with deliberately NON-contiguous COCO ids (like COCO's 1..90 with gaps),
  so label <-> category-id mapping bugs show up on toy data too: circle 1, square 2,
  triangle 3, ring 5, star 7.
- images ``short x {1, 4/3, 3/2}`` in landscape and portrait (160x160 .. 160x240, 240x160 at the
  default ``image_size=160``), so aspect-ratio grouping matters; a smooth random colour field plus
  pixel noise as background; about 3% of images have no object (training must skip them).
- 1..6 shapes per image, varied size (14%..42% of the short side), colour, rotation and position.
  Later shapes cover earlier ones; a placement is rejected when it would leave an earlier shape with
  less than half of its pixels visible.
- masks are the VISIBLE pixels (as in COCO). Unoccluded polygonal shapes (square, triangle, star)
  are stored as polygons, round shapes (circle, ring) and every occluded shape as compressed RLE.
  Polygons are rasterised with pycocotools itself when drawing, so the drawn pixels, the decoded
  annotation mask, ``area`` (= mask pixel count) and ``bbox`` (= mask extent) agree exactly.

Kinds (``kind=``; ``gcrepro data toy --kind``): ``shapes`` (the default, described above) and ``context``
(:mod:`gcrepro.data.toy_context`: identical discs whose class only a far-away coloured marker decides,
so only global context can tell the classes apart; each image entry carries its marker as
``gcrepro_cue``). The manifest's ``generator`` names the module that drew the set; both are ``toy``
data (synthetic, never compared with COCO).

Deterministic: every image is drawn from its own ``numpy`` generator seeded with
``(seed, split, index)``; files hold no timestamps, so a seed gives byte-identical JSON and PNGs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from gcrepro.atomic import write_json_atomic
from gcrepro.data.errors import DataError
from gcrepro.data import toy_context
from gcrepro.data.file_lock import exclusive_lock
from gcrepro.data.toy_shapes import CATEGORIES, annotation, render_image

logger = logging.getLogger("gcrepro.data")

TOY_VERSION = 1
MANIFEST_NAME = "gcrepro_toy.json"
DEFAULT_NUM_TRAIN = 512
DEFAULT_NUM_VAL = 64
DEFAULT_IMAGE_SIZE = 160  # short side in pixels
TOY_KINDS = ("shapes", "context")
_GENERATORS = {"shapes": "gcrepro.data.toy", "context": "gcrepro.data.toy_context"}  # the manifest's "generator"


# (height, width) as multiples of the short side: square, landscape 4:3 and 3:2, portrait 3:4 and 2:3.
_ASPECTS: tuple[tuple[float, float], ...] = ((1, 1), (1, 4 / 3), (1, 1.5), (4 / 3, 1), (1.5, 1))
_SPLIT_CODE = {"train": 0, "val": 1}
_VAL_ID_OFFSET = 100_000  # val image ids 100001.. so train and val ids never collide


def _image_sizes(image_size: int) -> list[tuple[int, int]]:
    return [(round(image_size * ah), round(image_size * aw)) for ah, aw in _ASPECTS]


def _draw(kind: str, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list, dict]:
    """One image of ``kind``: pixels, one annotation maker (ann_id, image_id) -> dict per object, extra image fields."""
    if kind == "context":
        drawn = toy_context.render_context_image(rng, height, width)
        makers = [functools.partial(toy_context.disc_annotation, d, drawn.category_id) for d in drawn.discs]
        return drawn.pixels, makers, {"gcrepro_cue": toy_context.cue_field(drawn)}
    pixels, placed = render_image(rng, height, width)
    return pixels, [functools.partial(annotation, shape, visible) for shape, visible in placed], {}


def _write_split(out: Path, split: str, *, kind: str, seed: int, count: int, image_size: int) -> dict:
    image_dir = out / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    sizes = _image_sizes(image_size)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
        height, width = sizes[int(rng.integers(len(sizes)))]
        pixels, makers, extra = _draw(kind, rng, height, width)
        image_id = index + 1 + (_VAL_ID_OFFSET if split == "val" else 0)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, **extra})
        for make in makers:
            annotations.append(make(len(annotations) + 1, image_id))
    categories = toy_context.CATEGORIES if kind == "context" else CATEGORIES
    return {
        "info": {"description": f"gcrepro toy {kind} v{TOY_VERSION}, seed {seed}, split {split}", "version": str(TOY_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "disc" if kind == "context" else "shape"}
                       for i, n in categories.items()],
    }


def _looks_like_toy(root: Path) -> bool:
    """True when deleting ``root`` cannot destroy anything but an (old or partial) toy dataset."""
    toy_names = {MANIFEST_NAME, "annotations", "train2017", "val2017"}
    return all(p.name in toy_names or p.name.startswith(".") for p in root.iterdir())


def make_toy_dataset(
    out: Path | str,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    kind: str = "shapes",
) -> Path:
    """Write the toy dataset of ``kind`` (``TOY_KINDS``) into ``out`` (COCO 2017 layout) and return ``out``.

    Any previous manifest is removed first and the new one is written last, so an interrupted
    run never looks complete.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if kind not in TOY_KINDS:
        raise ValueError(f"toy kind {kind!r}: expected one of {'|'.join(TOY_KINDS)}")
    if image_size < 64:
        raise ValueError(f"image_size (short side) must be >= 64 pixels, got {image_size}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and _looks_like_toy(out)):
        raise DataError(f"{out} exists and is not a gcrepro toy dataset; refusing to write into it (choose another folder)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # first: an interrupted rewrite never looks complete
    for folder in ("annotations", "train2017", "val2017"):  # no stale images from a bigger old set
        shutil.rmtree(out / folder, ignore_errors=True)
    counts = {}
    for split, count in (("train", num_train), ("val", num_val)):
        coco = _write_split(out, split, kind=kind, seed=seed, count=count, image_size=image_size)
        write_json_atomic(out / "annotations" / f"instances_{split}2017.json", coco, indent=None)
        counts[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    manifest = {
        "generator": _GENERATORS[kind],
        "version": TOY_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "counts": counts,
        **({"cue_margin": toy_context.MARGIN, "cue_size": toy_context.CUE_SIZE} if kind == "context" else {}),
    }
    write_json_atomic(out / MANIFEST_NAME, manifest, indent=None)
    return out


def read_manifest(root: Path | str) -> dict | None:
    """The toy manifest of ``root`` (any kind), or None when ``root`` holds no (complete) toy dataset."""
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") in _GENERATORS.values() else None


def _is_complete(root: Path, *, seed: int, num_train: int, num_val: int, image_size: int) -> bool:
    manifest = read_manifest(root)
    wanted = {"generator": _GENERATORS["shapes"], "version": TOY_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
    if manifest is None or any(manifest.get(k) != v for k, v in wanted.items()):
        return False
    for split, count in (("train", num_train), ("val", num_val)):
        if not (root / "annotations" / f"instances_{split}2017.json").is_file():
            return False
        image_dir = root / f"{split}2017"
        if not image_dir.is_dir() or sum(1 for p in image_dir.iterdir() if p.suffix == ".png") != count:
            return False
    return True


def _build_lock_file(root: Path) -> Path:
    """The lock beside ``root`` under which concurrent callers (training ranks) build it once."""
    root.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]  # lock outside the data folder: no clutter
    return Path(tempfile.gettempdir()) / f"gcrepro-toy-{key}.lock"


def ensure_toy(
    path: Path | str | None = None,
    seed: int = 0,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Path:
    """Return a complete toy dataset at ``path`` (default ``gcrepro.paths.default_toy_dir()``).

    Reused when its manifest matches (generator version, seed, sizes) and its files are all there;
    otherwise (re)built in a temporary sibling folder and renamed into place, under a lock file, so
    concurrent callers (e.g. several training ranks) build it once and never see a half-written set.
    """
    if path is None:
        from gcrepro.paths import default_toy_dir

        path = default_toy_dir()
    root = Path(path).expanduser().resolve()
    spec = {"seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
    if root.is_dir() and _is_complete(root, **spec):
        return root
    with exclusive_lock(_build_lock_file(root)):
        if root.is_dir() and _is_complete(root, **spec):  # another process built it meanwhile
            return root
        if root.exists() and not (root.is_dir() and _looks_like_toy(root)):
            raise DataError(f"{root} exists and is not a gcrepro toy dataset; refusing to overwrite it (choose another path)")
        logger.info("making the toy dataset at %s (seed %d, %d train + %d val images)", root, seed, num_train, num_val)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.building-"))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        try:
            make_toy_dataset(tmp, **spec)
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root
