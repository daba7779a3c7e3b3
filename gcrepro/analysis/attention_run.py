"""What attention.ipynb does: load a trained entry, capture its GC maps on val images, save figures.

    run = run_attention("mask_rcnn_r50_fpn_gc_r16_1x", run_dir=Path("runs/..."), num_images=2)
    run.paths      # RUN_DIR/attention/gc_image<ID>.png (stage x block grid), nonlocal_image<ID>.png
    run.results    # ImageMaps per image, for the interactive view (also saved: maps_image<ID>.npz)

GC-off entries have nothing to show: ``run.has_gc`` is False, ``run.message`` says so, and
only ``attention/summary.json`` is written.

:func:`attention` is what the notebook calls: maps the run already holds, for the same checkpoint and
settings, are loaded and shown as they are (looking runs no model); ``recompute`` captures them again.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from gcrepro.analysis import attention_plots, attention_store
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
    stored: bool = False  # loaded from the run folder, not captured now


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
    maps = [attention_store.save_maps(m, out_dir) for m in results]
    summary = {
        "entry": e.name, "gc": True, "checkpoint": str(checkpoint), "checkpoint_file": _file_id(Path(checkpoint)),
        "data": spec.data.root, "data_given": data, "label": spec.label,
        "num_images": num_images, "nonlocal_panel": nl_panel, "maps": [p.name for p in maps],
        "blocks": [{"name": b.name, "stage": b.stage, "block_index": b.block_index, "label": b.label} for b in blocks],
        "images": [m.image_id for m in results],
        "files": [p.name for p in paths],
        "nonlocal_block": nl_block.label if nl_block else None,
        "nonlocal_query_similarity": {str(m.image_id): query_similarity(m.nl) for m in results if m.nl is not None},
    }
    write_json_atomic(out_dir / "summary.json", summary)
    message = f"{len(blocks)} GC blocks x {len(results)} images: figures in {out_dir}"
    return AttentionRun(entry=e.name, has_gc=True, message=message, results=results, paths=paths)


def _file_id(path: Path) -> dict[str, int]:
    """What tells one checkpoint file from a rewritten one: size and modification time."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def stored_attention(entry: str, *, run_dir: Path, checkpoint: Path | None, data: str = "", num_images: int = 2,
                     nl_panel: bool = True) -> tuple[AttentionRun | None, str]:
    """(the maps the run folder holds when they are the ones asked for, why not otherwise): captured from
    ``checkpoint`` as it is now (same file, size and time), on the same data, with the same settings."""
    out_dir = Path(run_dir) / ATTENTION_DIR
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None, f"no maps in {out_dir} yet"
    if summary.get("entry") != entry or summary.get("gc") is not True or "maps" not in summary:
        return None, f"{out_dir}/summary.json holds no stored maps of {entry}"
    asked = {"num_images": num_images, "nonlocal_panel": nl_panel, "data_given": data}
    changed = [f"{k} {summary.get(k)!r} -> {v!r}" for k, v in asked.items() if summary.get(k) != v]
    if changed:
        return None, f"the stored maps were drawn with other settings ({', '.join(changed)})"
    if checkpoint is not None:
        now = _file_id(checkpoint) if checkpoint.is_file() else None
        if Path(summary.get("checkpoint", "")).resolve() != checkpoint.resolve() or summary.get("checkpoint_file") != now:
            return None, f"the stored maps are of {summary.get('checkpoint')} as it was then, not of {checkpoint} now"
    files = [out_dir / name for name in summary["maps"]]
    if not all(f.is_file() for f in files):
        return None, f"{out_dir}: a stored maps file is missing"
    pngs = [out_dir / name for name in summary.get("files", [])]
    run = AttentionRun(entry=entry, has_gc=True, stored=True, results=[attention_store.load_maps(f) for f in files],
                       paths=[p for p in pngs if p.is_file()],
                       message=f"{len(summary['blocks'])} GC blocks x {len(files)} images, stored in {out_dir}")
    return run, f"stored maps of {summary.get('checkpoint')}"


def attention(entry: str, *, run_dir: Path, checkpoint: str = "", data: str = "", num_images: int = 2,
              nl_panel: bool = True, device: str = "", recompute: bool = False) -> AttentionRun:
    """What attention.ipynb shows: the run's stored maps when they are the ones asked for and ``recompute`` is
    False (nothing is loaded or run: looking changes nothing); else :func:`run_attention`. Prints which."""
    import gcrepro
    from gcrepro.analysis.notebook_support import checkpoint_for

    e = gcrepro.get_entry(entry)
    if not e.gc:
        return run_attention(e.name, run_dir=run_dir, checkpoint=None)
    try:
        path: Path | None = checkpoint_for(Path(run_dir), checkpoint)
    except FileNotFoundError:
        if checkpoint or recompute:
            raise
        path = None  # no checkpoint (any more): stored maps can still be shown
    if not recompute:
        stored, why = stored_attention(e.name, run_dir=run_dir, checkpoint=path, data=data, num_images=num_images,
                                       nl_panel=nl_panel)
        if stored is not None:
            print(f"{why}: shown as stored, the model is not run (recompute=True captures them again)")
            return stored
        print(f"capturing: {why}")
    if path is None:
        path = checkpoint_for(Path(run_dir), checkpoint)  # raises, naming the run folder
    print(f"checkpoint {path}")
    return run_attention(e.name, run_dir=run_dir, checkpoint=path, data=data, num_images=num_images,
                         nl_panel=nl_panel, device=device)
