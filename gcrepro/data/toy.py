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

Deterministic: every image is drawn from its own ``numpy`` generator seeded with
``(seed, split, index)``; files hold no timestamps, so a seed gives byte-identical JSON and PNGs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from gcrepro.data.errors import DataError

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock; the temporary-folder rename still protects readers
    fcntl = None

logger = logging.getLogger("gcrepro.data")

TOY_VERSION = 1
MANIFEST_NAME = "gcrepro_toy.json"
DEFAULT_NUM_TRAIN = 512
DEFAULT_NUM_VAL = 64
DEFAULT_IMAGE_SIZE = 160  # short side in pixels

# COCO category id -> name. Ids have gaps on purpose (see module docstring).
CATEGORIES: dict[int, str] = {1: "circle", 2: "square", 3: "triangle", 5: "ring", 7: "star"}
_ROUND = ("circle", "ring")

# (height, width) as multiples of the short side: square, landscape 4:3 and 3:2, portrait 3:4 and 2:3.
_ASPECTS: tuple[tuple[float, float], ...] = ((1, 1), (1, 4 / 3), (1, 1.5), (4 / 3, 1), (1.5, 1))
_EMPTY_PROB = 0.03
_MAX_SHAPES = 6
_MIN_SIZE, _MAX_SIZE = 0.14, 0.42  # shape diameter as a fraction of the short side
_MIN_VISIBLE = 0.5  # an earlier shape keeps at least this fraction of its pixels
_PLACEMENT_TRIES = 20
_SPLIT_CODE = {"train": 0, "val": 1}
_VAL_ID_OFFSET = 100_000  # val image ids 100001.. so train and val ids never collide


@dataclass(frozen=True)
class _Shape:
    category_id: int
    full: np.ndarray  # bool [H, W]: every pixel of the shape
    polygon: list[float] | None  # flat [x0, y0, x1, y1, ...] for polygonal shapes


def _polygon_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)  # [H, W]


def _draw_shape(rng: np.random.Generator, name: str, category_id: int, height: int, width: int) -> _Shape:
    short = min(height, width)
    size = rng.uniform(_MIN_SIZE, _MAX_SIZE) * short  # diameter of the circumscribed circle
    radius = size / 2
    cx = rng.uniform(radius + 1, width - radius - 1)
    cy = rng.uniform(radius + 1, height - radius - 1)
    theta = rng.uniform(0, 2 * math.pi)
    if name in _ROUND:
        yy, xx = np.mgrid[0:height, 0:width]
        d2 = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2
        full = d2 <= radius**2
        if name == "ring":
            inner = radius * rng.uniform(0.45, 0.65)
            full &= d2 >= inner**2
        return _Shape(category_id, full, None)
    if name == "square":
        radii, angles = [radius] * 4, [theta + k * math.pi / 2 for k in range(4)]
    elif name == "triangle":
        radii, angles = [radius] * 3, [theta + k * 2 * math.pi / 3 for k in range(3)]
    elif name == "star":
        inner = radius * rng.uniform(0.4, 0.55)
        radii = [radius if k % 2 == 0 else inner for k in range(10)]
        angles = [theta + k * math.pi / 5 for k in range(10)]
    else:
        raise ValueError(f"unknown toy shape {name!r}; expected one of {sorted(CATEGORIES.values())}")
    polygon: list[float] = []
    for r, a in zip(radii, angles):
        # rounded BEFORE rasterising: the JSON holds exactly the polygon that was drawn
        polygon += [round(cx + r * math.cos(a), 2), round(cy + r * math.sin(a), 2)]
    return _Shape(category_id, _polygon_mask(polygon, height, width), polygon)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.abs(colour - background).sum() >= 150:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random colour field [H, W, 3] (float) around a base colour [3]."""
    base = rng.uniform(40, 215, size=3)
    coarse = np.clip(base + rng.normal(0, 30, size=(4, 5, 3)), 0, 255).astype(np.uint8)  # [4, 5, 3]
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)
    return smooth, base


def _render(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[tuple[_Shape, np.ndarray]]]:
    """One image: uint8 [H, W, 3] and its shapes with their visible masks (drawing order)."""
    image, base = _background(rng, height, width)
    noise = rng.standard_normal(size=(height, width, 3), dtype=np.float32)  # [H, W, 3] pixel texture
    image += 10 * noise
    num_shapes = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(1, _MAX_SHAPES + 1))
    cat_ids = list(CATEGORIES)
    placed: list[tuple[_Shape, np.ndarray]] = []  # (shape, visible mask)
    for _ in range(num_shapes):
        category_id = cat_ids[int(rng.integers(len(cat_ids)))]
        for _try in range(_PLACEMENT_TRIES):
            shape = _draw_shape(rng, CATEGORIES[category_id], category_id, height, width)
            kept = [visible & ~shape.full for _, visible in placed]
            if all(k.sum() >= _MIN_VISIBLE * s.full.sum() for k, (s, _) in zip(kept, placed)):
                break
        else:
            continue  # no room left for this shape
        placed = [(s, k) for (s, _), k in zip(placed, kept)] + [(shape, shape.full.copy())]
        colour = _contrasting_colour(rng, base).astype(np.float32)
        image[shape.full] = colour + 6 * noise[shape.full]
    return np.clip(image, 0, 255).round().astype(np.uint8), placed


def _annotation(shape: _Shape, visible: np.ndarray, ann_id: int, image_id: int) -> dict:
    ys, xs = np.nonzero(visible)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    if shape.polygon is not None and np.array_equal(visible, shape.full):
        segmentation: list | dict = [shape.polygon]
    else:
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": shape.category_id,
        "segmentation": segmentation,
        "area": float(visible.sum()),
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],  # COCO xywh
        "iscrowd": 0,
    }


def _image_sizes(image_size: int) -> list[tuple[int, int]]:
    return [(round(image_size * ah), round(image_size * aw)) for ah, aw in _ASPECTS]


def _write_split(out: Path, split: str, *, seed: int, count: int, image_size: int) -> dict:
    image_dir = out / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    sizes = _image_sizes(image_size)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
        height, width = sizes[int(rng.integers(len(sizes)))]
        pixels, placed = _render(rng, height, width)
        image_id = index + 1 + (_VAL_ID_OFFSET if split == "val" else 0)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for shape, visible in placed:
            annotations.append(_annotation(shape, visible, len(annotations) + 1, image_id))
    return {
        "info": {"description": f"gcrepro toy shapes v{TOY_VERSION}, seed {seed}, split {split}", "version": str(TOY_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in CATEGORIES.items()],
    }


def _write_json_atomic(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_toy_dataset(
    out: Path | str,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Path:
    """Write the toy dataset into ``out`` (COCO 2017 layout) and return ``out``.

    Any previous manifest is removed first and the new one is written last, so an interrupted
    run never looks complete.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if image_size < 64:
        raise ValueError(f"image_size (short side) must be >= 64 pixels, got {image_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    counts = {}
    for split, count in (("train", num_train), ("val", num_val)):
        coco = _write_split(out, split, seed=seed, count=count, image_size=image_size)
        _write_json_atomic(out / "annotations" / f"instances_{split}2017.json", coco)
        counts[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    manifest = {
        "generator": "gcrepro.data.toy",
        "version": TOY_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "counts": counts,
    }
    _write_json_atomic(out / MANIFEST_NAME, manifest)
    return out


def read_manifest(root: Path | str) -> dict | None:
    """The toy manifest of ``root``, or None when ``root`` holds no (complete) toy dataset."""
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "gcrepro.data.toy" else None


def _is_complete(root: Path, *, seed: int, num_train: int, num_val: int, image_size: int) -> bool:
    manifest = read_manifest(root)
    wanted = {"version": TOY_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
    if manifest is None or any(manifest.get(k) != v for k, v in wanted.items()):
        return False
    for split, count in (("train", num_train), ("val", num_val)):
        if not (root / "annotations" / f"instances_{split}2017.json").is_file():
            return False
        image_dir = root / f"{split}2017"
        if not image_dir.is_dir() or sum(1 for p in image_dir.iterdir() if p.suffix == ".png") != count:
            return False
    return True


def _looks_like_toy(root: Path) -> bool:
    """True when deleting ``root`` cannot destroy anything but an (old or partial) toy dataset."""
    toy_names = {MANIFEST_NAME, "annotations", "train2017", "val2017"}
    return all(p.name in toy_names or p.name.startswith(".") for p in root.iterdir())


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Exclusive lock beside ``root`` so concurrent callers (training ranks) build it once."""
    root.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]  # lock outside the data folder: no clutter
    with open(Path(tempfile.gettempdir()) / f"gcrepro-toy-{key}.lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


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
    with _build_lock(root):
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
