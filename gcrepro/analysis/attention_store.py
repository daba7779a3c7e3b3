"""Captured attention maps on disk: ``RUN_DIR/attention/maps_image<ID>.npz``, one per image.

Saved beside the PNGs so that opening the attention notebook again shows the maps (figures and the
interactive view) without loading the model or running it. Per image: the image (uint8), every GC
block's map with the blocks' stage, index and module name, and the non-local maps with their query
points when captured. Maps are kept as 8-bit steps between each map's own minimum and maximum (the
figures scale each map to its own range; a step is 1/255 of it), a few MB per COCO image.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from gcrepro.analysis.attention_maps import BlockRef, ImageMaps
from gcrepro.atomic import atomic_open


def maps_file(image_id: int) -> str:
    return f"maps_image{image_id}.npz"


def _quantised(maps: np.ndarray) -> dict[str, np.ndarray]:
    """[N, H, W] floats -> uint8 steps between each map's min and max (``q``, ``lo``, ``hi``)."""
    lo = maps.min(axis=(1, 2)).astype(np.float32)  # [N]
    hi = maps.max(axis=(1, 2)).astype(np.float32)  # [N]
    span = np.where(hi > lo, hi - lo, 1.0)[:, None, None]
    q = np.round((maps - lo[:, None, None]) / span * 255.0).astype(np.uint8)  # [N, H, W]
    return {"q": q, "lo": lo, "hi": hi}


def _restored(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo[:, None, None] + q.astype(np.float32) / 255.0 * (hi - lo)[:, None, None]).astype(np.float32)


def save_maps(maps: ImageMaps, out_dir: Path) -> Path:
    """Write one image's maps (atomically); returns the file."""
    blocks = sorted(maps.gc)
    arrays = {
        "image": np.round(np.clip(maps.image, 0.0, 1.0) * 255).astype(np.uint8),  # [H, W, 3]
        "image_id": np.int64(maps.image_id),
        **{f"gc_{k}": v for k, v in _quantised(np.stack([maps.gc[b] for b in blocks])).items()},  # [B, H, W]
        "stage": np.array([b.stage for b in blocks], dtype=np.int64),
        "block_index": np.array([b.block_index for b in blocks], dtype=np.int64),
        "name": np.array([b.name for b in blocks]),
    }
    if maps.nl is not None and maps.nl_block is not None:
        arrays.update({f"nl_{k}": v for k, v in _quantised(maps.nl).items()})  # [Q, H, W]
        arrays["nl_queries"] = np.asarray(maps.nl_queries, dtype=np.float64)  # [Q, 2] (y, x)
        arrays["nl_block"] = np.array([maps.nl_block.stage, maps.nl_block.block_index], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = Path(out_dir) / maps_file(maps.image_id)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def load_maps(path: Path) -> ImageMaps:
    """One image's maps as :func:`save_maps` wrote them (maps as float32 within a step, the image as 0..1 floats)."""
    with np.load(path, allow_pickle=False) as f:
        blocks = [BlockRef(stage=int(s), block_index=int(i), name=str(n))
                  for s, i, n in zip(f["stage"], f["block_index"], f["name"])]
        gc = dict(zip(blocks, _restored(f["gc_q"], f["gc_lo"], f["gc_hi"])))
        maps = ImageMaps(image=f["image"].astype(np.float32) / 255.0, image_id=int(f["image_id"]), gc=gc)
        if "nl_q" in f:
            stage, index = (int(v) for v in f["nl_block"])
            maps.nl_block = next(b for b in blocks if (b.stage, b.block_index) == (stage, index))
            maps.nl_queries = [(float(y), float(x)) for y, x in f["nl_queries"]]
            maps.nl = _restored(f["nl_q"], f["nl_lo"], f["nl_hi"])
    return maps
