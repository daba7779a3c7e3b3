"""How much of each GC block's attention falls on the cue of a toy "context" image.

On the context set (:mod:`gcrepro.data.toy_context`) the class of every object is set by one marker
(the cue) far from the objects, and each val image entry records the cue's box (``gcrepro_cue``).
For one GC block and one image::

    share      = attention mass inside the cue box / the map's whole mass
    area_share = cue box area / image area       (what a uniform map would give)
    ratio      = share / area_share               (> 1: attention concentrated on the cue)

The maps are :func:`gcrepro.analysis.attention_maps.capture_maps`' (each block's softmax map
upsampled to the image), captured on the val images; per block the mean over images is reported,
and per stage the mean over its blocks. ``run_cue_attention`` writes ``RUN_DIR/attention/cue_share.json``
and reuses it while the checkpoint file is unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gcrepro.analysis.attention_maps import STAGE_NAMES, BlockRef, ImageMaps
from gcrepro.atomic import write_json_atomic

CUE_FIELD = "gcrepro_cue"  # the image entries' field the context generator writes
CUE_SHARE_FILE = "cue_share.json"


def cue_share(attention: np.ndarray, box_xywh: list[float]) -> tuple[float, float]:
    """(share of the map's mass inside the box, the box's share of the map's area) for one [H, W] map."""
    if attention.ndim != 2:
        raise ValueError(f"cue_share: attention of shape {attention.shape}; expected one [H, W] map")
    height, width = attention.shape
    x, y, w, h = box_xywh
    x0, y0 = max(int(round(x)), 0), max(int(round(y)), 0)
    x1, y1 = min(int(round(x + w)), width), min(int(round(y + h)), height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"cue_share: box {box_xywh} lies outside the {height}x{width} map")
    mass = np.clip(attention.astype(np.float64), 0.0, None)  # bilinear upsampling never makes mass negative
    total = mass.sum()
    if total <= 0:
        raise ValueError("cue_share: the map has no mass (all zero)")
    return float(mass[y0:y1, x0:x1].sum() / total), float((x1 - x0) * (y1 - y0) / (height * width))


def read_cues(data_root: str | Path, split: str = "val") -> dict[int, list[float]]:
    """Image id -> cue box (COCO xywh) of a dataset's split; empty when its images carry no cue."""
    from gcrepro.data.coco import annotation_file

    images = json.loads(annotation_file(Path(data_root), split).read_text())["images"]
    return {int(img["id"]): [float(v) for v in img[CUE_FIELD]["bbox"]] for img in images if CUE_FIELD in img}


def summarise(maps: list[ImageMaps], cues: dict[int, list[float]]) -> dict:
    """Per block and per stage: mean share, mean area share, mean ratio over the images (see the module docstring)."""
    per_block: dict[BlockRef, list[tuple[float, float]]] = {}
    for image in maps:
        box = cues[image.image_id]
        for block, att in image.gc.items():
            per_block.setdefault(block, []).append(cue_share(att, box))
    blocks = []
    for block in sorted(per_block):
        values = np.asarray(per_block[block])  # [images, 2]: share, area share
        blocks.append({"block": block.label, "stage": STAGE_NAMES.get(block.stage, str(block.stage)),
                       "block_index": block.block_index, "images": len(values),
                       "share": float(values[:, 0].mean()), "area_share": float(values[:, 1].mean()),
                       "ratio": float((values[:, 0] / values[:, 1]).mean())})
    stages = []
    for stage in dict.fromkeys(b["stage"] for b in blocks):
        mine = [b for b in blocks if b["stage"] == stage]
        stages.append({"stage": stage, "blocks": len(mine),
                       **{k: float(np.mean([b[k] for b in mine])) for k in ("share", "area_share", "ratio")}})
    return {"images": len(maps), "blocks": blocks, "stages": stages}


def format_table(summary: dict) -> str:
    """The per-stage and per-block shares as plain text."""
    lines = [f"cue attention share over {summary['images']} val images (ratio > 1: attention concentrated on the cue)",
             f"{'':10} {'share':>7} {'area':>7} {'ratio':>6}"]
    for row in summary["stages"]:
        lines.append(f"{row['stage'] + ' (mean)':10} {row['share']:7.3f} {row['area_share']:7.3f} {row['ratio']:6.2f}")
    for row in summary["blocks"]:
        lines.append(f"{row['block']:10} {row['share']:7.3f} {row['area_share']:7.3f} {row['ratio']:6.2f}")
    return "\n".join(lines)


def run_cue_attention(entry: str, *, run_dir: Path, checkpoint: Path, data: str = "", num_images: int = 0,
                      device: str = "", recompute: bool = False) -> dict | None:
    """The cue shares of a trained GC entry on its val images (``num_images`` 0: all), written to
    RUN_DIR/attention/cue_share.json; None when the val set has no cues (not a context set).
    A stored file for the same checkpoint file, data and image count is returned as it is unless ``recompute``."""
    from gcrepro.analysis.attention_maps import capture_maps
    from gcrepro.analysis.attention_run import _file_id, load_trained_model
    from gcrepro.data import CocoInstances
    from gcrepro.engine.model_checkpoint import open_checkpoint

    out = Path(run_dir) / "attention" / CUE_SHARE_FILE
    asked = {"entry": entry, "checkpoint": str(checkpoint), "checkpoint_file": _file_id(Path(checkpoint)),
             "data_given": data, "num_images": num_images}
    if not recompute and out.is_file():
        stored = json.loads(out.read_text())
        if all(stored.get(k) == v for k, v in asked.items()):
            return stored
    cues = read_cues(open_checkpoint(entry, Path(checkpoint), data=data or None).spec.data.root)
    if not cues:
        return None  # decided before the model is built
    model, spec = load_trained_model(entry, Path(checkpoint), data=data or None,
                                     device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = CocoInstances(spec.data.root, split="val", train=False)
    count = len(dataset) if num_images == 0 else min(num_images, len(dataset))
    maps = []
    threads = torch.get_num_threads()
    if spec.train.cpu_threads > 0 and next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(spec.train.cpu_threads)  # the run's own (toy: 1): beside other runs, 2 threads wait
    try:
        for i in range(count):
            image, target = dataset[i]
            maps.append(capture_maps(model, image, image_id=int(target["image_id"])))
    finally:
        torch.set_num_threads(threads)
    summary = {**asked, "data": spec.data.root, **summarise(maps, cues)}
    write_json_atomic(out, summary)
    return summary
