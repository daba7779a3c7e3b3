"""What attention.ipynb does: load a trained entry, capture its GC maps on val images, save figures.

    run = run_attention("mask_rcnn_r50_fpn_gc_r16_1x", run_dir=Path("runs/..."), num_images=2)
    run.paths      # RUN_DIR/attention/gc_image<ID>.png (stage x block grid), nonlocal_image<ID>.png
    run.results    # ImageMaps per image, for the interactive view

GC-off entries have nothing to show: ``run.has_gc`` is False, ``run.message`` says so, and
only ``attention/summary.json`` is written.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from gcrepro.analysis import attention_plots
from gcrepro.atomic import write_json_atomic
from gcrepro.analysis.attention_maps import BlockRef, ImageMaps, capture_maps, gc_blocks, query_similarity
from gcrepro.runspec import RunSpec

ATTENTION_DIR = "attention"


@dataclasses.dataclass
class AttentionRun:
    entry: str
    has_gc: bool
    message: str
    results: list[ImageMaps] = dataclasses.field(default_factory=list)
    paths: list[Path] = dataclasses.field(default_factory=list)


def load_trained_model(entry: str, checkpoint: Path, *, data: str | Path | None = None,
                       device: str = "cpu") -> tuple[nn.Module, RunSpec]:
    """The model a checkpoint holds (any layout: gcrepro's run spec, converted, mmdetection, ...), with its
    weights, in eval mode on ``device``; and its spec, on the val set of ``data`` (default: the data it was
    trained on, or data/coco for a model trained elsewhere)."""
    from gcrepro.engine.model_checkpoint import open_checkpoint
    from gcrepro.modeling.build import build_detector

    opened = open_checkpoint(entry, checkpoint, data=data)
    model = build_detector(opened.spec.model)
    model.load_state_dict(opened.state_dict)
    return model.to(device).eval(), opened.spec


def default_nl_block(blocks: list[BlockRef]) -> BlockRef | None:
    """The last GC block of c4 (layer3), where the paper's non-local comparison sits; else the last block."""
    c4 = [b for b in blocks if b.stage == 3]
    return (c4 or blocks)[-1] if blocks else None


def run_attention(
    entry: str,
    *,
    run_dir: Path,
    checkpoint: Path | None,
    data: str = "",
    num_images: int = 2,
    nl_panel: bool = True,
    device: str = "",
) -> AttentionRun:
    """Capture and save the GC maps of ``num_images`` val images; see the module docstring."""
    import gcrepro
    from gcrepro.data import CocoInstances

    e = gcrepro.get_entry(entry)
    out_dir = Path(run_dir) / ATTENTION_DIR
    if not e.gc:
        message = f"{e.name} has no GC blocks (context: {e.context}): there is no GC attention to show."
        write_json_atomic(out_dir / "summary.json", {"entry": e.name, "gc": False, "message": message})
        return AttentionRun(entry=e.name, has_gc=False, message=message)
    if num_images < 1:
        raise ValueError(f"num_images {num_images}: expected at least 1")
    if checkpoint is None:
        raise FileNotFoundError(f"{e.name}: no checkpoint given")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, spec = load_trained_model(e.name, checkpoint, data=data or None, device=device)
    dataset = CocoInstances(spec.data.root, split="val", train=False)
    blocks = gc_blocks(model)
    nl_block = default_nl_block(blocks) if nl_panel else None
    results = []
    for i in range(min(num_images, len(dataset))):
        image, target = dataset[i]
        results.append(capture_maps(model, image, image_id=int(target["image_id"]), boxes=target["boxes"], nl_block=nl_block))
    paths = attention_plots.save_all(results, out_dir, entry=e.name)
    summary = {
        "entry": e.name, "gc": True, "checkpoint": str(checkpoint), "data": spec.data.root, "label": spec.label,
        "blocks": [{"name": b.name, "stage": b.stage, "block_index": b.block_index, "label": b.label} for b in blocks],
        "images": [m.image_id for m in results],
        "files": [p.name for p in paths],
        "nonlocal_block": nl_block.label if nl_block else None,
        "nonlocal_query_similarity": {str(m.image_id): query_similarity(m.nl) for m in results if m.nl is not None},
    }
    write_json_atomic(out_dir / "summary.json", summary)
    message = f"{len(blocks)} GC blocks x {len(results)} images: figures in {out_dir}"
    return AttentionRun(entry=e.name, has_gc=True, message=message, results=results, paths=paths)
