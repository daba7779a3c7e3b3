"""Drawing one toy image: shapes on a textured background, with their visible masks and COCO
annotations (see ``gcrepro.data.toy`` for the dataset around it).

Later shapes cover earlier ones; a placement is rejected when it would leave an earlier shape with
less than half of its pixels visible. Masks are the VISIBLE pixels. Polygons are rasterised with
pycocotools itself, so drawn pixels, decoded annotation masks, ``area`` and ``bbox`` agree exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# COCO category id -> name. Ids have gaps on purpose, like COCO's 1..90, so label <-> category-id
# mapping bugs show up on toy data too.
CATEGORIES: dict[int, str] = {1: "circle", 2: "square", 3: "triangle", 5: "ring", 7: "star"}
_ROUND = ("circle", "ring")  # stored as RLE; the others as polygons when unoccluded

_EMPTY_PROB = 0.03
_MAX_SHAPES = 6
_MIN_SIZE, _MAX_SIZE = 0.14, 0.42  # shape diameter as a fraction of the short side
_MIN_VISIBLE = 0.5  # an earlier shape keeps at least this fraction of its pixels
_PLACEMENT_TRIES = 20


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


def render_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[tuple[_Shape, np.ndarray]]]:
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


def annotation(shape: _Shape, visible: np.ndarray, ann_id: int, image_id: int) -> dict:
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
