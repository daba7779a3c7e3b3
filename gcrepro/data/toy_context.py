"""Drawing one toy "context" image: identical discs whose class only a far-away marker decides
(see ``gcrepro.data.toy`` for the dataset around it; ``gcrepro data toy --kind context``).

The rule. Every image holds one *cue*: an axis-aligned square marker (``CUE_SIZE``, 30% of the short
side) in one of ``K = 3`` colours (red, green, blue), and 1..4 *discs*. Every disc of an image has the class of that image's cue
(category ``disc_cue_red`` / ``disc_cue_green`` / ``disc_cue_blue``). The discs look the same
for every class: one colour, one shape, the same size and position distributions, drawn with the
same random numbers whatever the cue colour is (the colour is drawn first, its draw consumed even
when a caller forces it). The background is drawn from one distribution for all classes.

Why a local window cannot decide. Every disc's box grown by a margin ``M`` (``MARGIN`` of the short
side, 16 px at the default 160) is clear of the cue's box. The cue's colour is drawn independently of
everything else in the image, and the cue's pixels are the only ones that depend on it; so whatever
lies inside a disc's box + M has the same distribution for all K classes, and a classifier that reads
only that window can do no better than chance (1/K) between them. Only a model that looks further
(at the whole image) can tell the classes apart.

What this does NOT claim: a ResNet-50's theoretical receptive field covers a whole toy image from c4
on, and the FPN's top-down path carries c5 into every level, so the baseline detector is not blind to
the cue in principle. The argument above is about windows of box + M; how far a network's *effective*
context reaches is what the experiment measures (README, "A toy task where global context matters").

Each image entry in the annotation file carries its cue (an extra field; pycocotools ignores it)::

    "gcrepro_cue": {"bbox": [x, y, w, h], "category_id": 2, "colour": "green"}

Masks are full discs (discs never overlap), stored as compressed RLE; ``area`` and ``bbox`` are the
mask's pixel count and extent, as in the shapes set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# COCO category id -> name, with a gap (like the shapes set) so id <-> label mapping bugs show here too.
CATEGORIES: dict[int, str] = {1: "disc_cue_red", 2: "disc_cue_green", 4: "disc_cue_blue"}
CUE_COLOURS: dict[int, tuple[str, tuple[float, float, float]]] = {
    1: ("red", (215.0, 35.0, 35.0)),
    2: ("green", (35.0, 190.0, 60.0)),
    4: ("blue", (40.0, 70.0, 225.0)),
}
DISC_COLOUR = (235.0, 195.0, 40.0)  # amber: every disc of every class

MARGIN = 0.10  # M: a disc's box grown by this fraction of the short side never touches the cue's box
CUE_SIZE = 0.30  # the cue square's side, fraction of the short side
_MIN_DISC, _MAX_DISC = 0.16, 0.30  # disc diameter, fraction of the short side
_MAX_DISCS = 4
_GAP = 2  # pixels between discs
_TRIES = 30


@dataclass(frozen=True)
class Disc:
    mask: np.ndarray  # bool [H, W]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive pixel extent of the mask)


@dataclass(frozen=True)
class ContextImage:
    pixels: np.ndarray  # uint8 [H, W, 3]
    discs: list[Disc]
    cue_box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    category_id: int  # the class of every disc: set by the cue's colour


def margin_pixels(height: int, width: int) -> int:
    return round(MARGIN * min(height, width))


def _grown(box: tuple[int, int, int, int], by: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return x0 - by, y0 - by, x1 + by, y1 + by


def boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two inclusive pixel boxes (x0, y0, x1, y1) share a pixel."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth, weakly tinted grey field [H, W, 3] (float): the same distribution for every class."""
    grey = rng.uniform(70, 180)
    tint = rng.normal(0, 10, size=3)
    coarse = np.clip(grey + tint + rng.normal(0, 18, size=(4, 5, 3)), 0, 255).astype(np.uint8)  # [4, 5, 3]
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)


def _disc(rng: np.random.Generator, height: int, width: int) -> Disc:
    short = min(height, width)
    radius = rng.uniform(_MIN_DISC, _MAX_DISC) * short / 2
    cx = rng.uniform(radius + 1, width - radius - 1)
    cy = rng.uniform(radius + 1, height - radius - 1)
    yy, xx = np.mgrid[0:height, 0:width]
    mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2  # [H, W]
    ys, xs = np.nonzero(mask)
    return Disc(mask, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))


def _cue_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    side = round(CUE_SIZE * min(height, width))
    x0 = int(rng.integers(2, width - side - 1))
    y0 = int(rng.integers(2, height - side - 1))
    return x0, y0, x0 + side - 1, y0 + side - 1


def _place_discs(rng: np.random.Generator, height: int, width: int, cue: tuple[int, int, int, int]) -> list[Disc]:
    margin = margin_pixels(height, width)
    discs: list[Disc] = []
    for _ in range(int(rng.integers(1, _MAX_DISCS + 1))):
        for _try in range(_TRIES):
            disc = _disc(rng, height, width)
            clear_of_cue = not boxes_overlap(_grown(disc.box, margin), cue)
            if clear_of_cue and not any(boxes_overlap(_grown(disc.box, _GAP), d.box) for d in discs):
                discs.append(disc)
                break
    return discs


def render_context_image(rng: np.random.Generator, height: int, width: int, *,
                         category_id: int | None = None) -> ContextImage:
    """One image. ``category_id`` forces the cue's class (tests); its random draw is made either way,
    so the same generator state gives the same image but for the cue's pixels."""
    drawn = list(CATEGORIES)[int(rng.integers(len(CATEGORIES)))]
    category_id = drawn if category_id is None else category_id
    if category_id not in CATEGORIES:
        raise ValueError(f"toy_context category_id={category_id}: expected one of {list(CATEGORIES)}")
    image = _background(rng, height, width)
    noise = rng.standard_normal(size=(height, width, 3), dtype=np.float32)  # [H, W, 3] pixel texture
    image += 10 * noise
    while True:  # a cue with room for at least one disc (nearly always the first)
        cue = _cue_box(rng, height, width)
        discs = _place_discs(rng, height, width, cue)
        if discs:
            break
    for disc in discs:
        image[disc.mask] = np.asarray(DISC_COLOUR, dtype=np.float32) + 6 * noise[disc.mask]
    x0, y0, x1, y1 = cue
    colour = np.asarray(CUE_COLOURS[category_id][1], dtype=np.float32)
    image[y0:y1 + 1, x0:x1 + 1] = colour + 6 * noise[y0:y1 + 1, x0:x1 + 1]
    return ContextImage(np.clip(image, 0, 255).round().astype(np.uint8), discs, cue, category_id)


def cue_field(drawn: ContextImage) -> dict:
    """The image entry's ``gcrepro_cue``: the cue's COCO xywh box, its class and colour."""
    x0, y0, x1, y1 = drawn.cue_box
    return {"bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
            "category_id": drawn.category_id, "colour": CUE_COLOURS[drawn.category_id][0]}


def disc_annotation(disc: Disc, category_id: int, ann_id: int, image_id: int) -> dict:
    """A disc's COCO annotation: RLE mask, area = pixel count, bbox = mask extent."""
    rle = mask_utils.encode(np.asfortranarray(disc.mask.astype(np.uint8)))
    x0, y0, x1, y1 = disc.box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(disc.mask.sum()),
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],  # COCO xywh
        "iscrowd": 0,
    }
