"""Figures of GC attention: one stage x block grid per image, the non-local panel, PNGs, a widget.

Figures are made with ``matplotlib.figure.Figure`` (no pyplot state), so the
library never pops windows; notebooks ``display()`` what they want. Every heatmap
has a colour bar and a one-line reading guide (what the map is, what high means).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from gcrepro.analysis.figures import save_figure
from gcrepro.analysis.attention_maps import STAGE_NAMES, BlockRef, ImageMaps, query_similarity

CMAP = "jet"
ALPHA = 0.5
COLORBAR_LABEL = "attention weight, scaled per map (0 = lowest, 1 = highest)"
GUIDE = ("Each map: the GC block's softmax attention over the image, the weights with which it pools its global "
         "context; red = positions that contribute most, blue = least.")
NONLOCAL_GUIDE = ("Non-local maps: attention of the marked query point (x) over all positions; the GC map is one map "
                  "for every query. Red = high weight, blue = low.")
WIDGET_BOX = (480, 400)  # the interactive view's image at most this wide x high (CSS px): the controls stay in view
WIDGET_SCALE = 2  # PNG pixels per CSS pixel: sharp on high-density screens, never upscaled by the browser


def normalise(m: np.ndarray) -> np.ndarray:
    """Scale one map to 0..1 (each map has its own range; a flat map stays 0)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def overlay(ax: Axes, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.imshow(normalise(heat), cmap=CMAP, alpha=ALPHA, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def colour_bar(fig: Figure, axes) -> None:
    """One colour bar for the 0..1 scale every overlay uses, beside ``axes``."""
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=CMAP), ax=axes, shrink=0.85, fraction=0.04,
                       pad=0.02)
    bar.set_label(COLORBAR_LABEL, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def attention_grid(maps: ImageMaps, *, title: str = "", outline: list[float] | None = None) -> Figure:
    """Rows: stages c3..c5; columns: blocks. Each cell: the block's GC map over the image; ``outline``: a box
    (COCO xywh, image pixels) drawn in white on every cell, e.g. a toy context image's cue (``gcrepro_cue``)."""
    stages = sorted({b.stage for b in maps.gc})
    cols = max(sum(1 for b in maps.gc if b.stage == s) for s in stages)
    cell = min(2.2, 36.0 / cols)
    h, w = maps.image.shape[:2]
    fig = Figure(figsize=(cell * cols * w / max(h, w) + 1.4, cell * len(stages) * h / max(h, w) + 1.1), dpi=100,
                 layout="constrained")
    axes = fig.subplots(len(stages), cols, squeeze=False)
    for r, stage in enumerate(stages):
        blocks = sorted(b for b in maps.gc if b.stage == stage)
        for c in range(cols):
            ax = axes[r, c]
            if c < len(blocks):
                overlay(ax, maps.image, maps.gc[blocks[c]], blocks[c].label)
                if outline is not None:
                    x, y, w, h = outline
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="white", linewidth=1.2))
            else:
                ax.set_axis_off()
    colour_bar(fig, axes)
    fig.suptitle(title or f"GC attention, image {maps.image_id} (each map scaled to its own range)", fontsize=10)
    fig.supxlabel(GUIDE, fontsize=8)
    return fig


def nonlocal_panel(maps: ImageMaps, *, title: str = "") -> Figure:
    """Non-local maps for several query points (marked x) beside the block's single GC map."""
    if maps.nl is None or maps.nl_block is None:
        raise ValueError("no non-local maps captured for this image (pass nl_block to capture_maps)")
    q = len(maps.nl)
    fig = Figure(figsize=(2.6 * (q + 1) + 0.8, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, q + 1, squeeze=False)[0]
    for i, ((y, x), heat) in enumerate(zip(maps.nl_queries, maps.nl)):
        overlay(axes[i], maps.image, heat, f"non-local, query {i + 1}")
        axes[i].plot([x], [y], marker="x", color="white", markersize=10, markeredgewidth=2.5)
        axes[i].plot([x], [y], marker="x", color="black", markersize=8, markeredgewidth=1.2)
    overlay(axes[q], maps.image, maps.gc[maps.nl_block], f"GC (one map), {maps.nl_block.label}")
    sim = query_similarity(maps.nl)
    fig.suptitle(
        title or f"{maps.nl_block.label}, image {maps.image_id}: simplified non-local maps "
        f"(mean cosine similarity across queries {sim:.2f}) vs the GC map",
        fontsize=9,
    )
    colour_bar(fig, axes)
    fig.supxlabel(NONLOCAL_GUIDE, fontsize=8)
    return fig


def save_all(results: list[ImageMaps], out_dir: Path, *, entry: str = "") -> list[Path]:
    """``out_dir/gc_image<ID>.png`` per image and ``out_dir/nonlocal_image<ID>.png`` where captured."""
    paths = []
    for maps in results:
        prefix = f"{entry}: " if entry else ""
        grid = attention_grid(maps, title=f"{prefix}GC attention, image {maps.image_id} (rows c3-c5, columns blocks; each map scaled to its range)")
        paths.append(save_figure(grid, out_dir / f"gc_image{maps.image_id}.png"))
        if maps.nl is not None:
            paths.append(save_figure(nonlocal_panel(maps), out_dir / f"nonlocal_image{maps.image_id}.png"))
    return paths


def png_bytes(fig: Figure, *, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes (for widgets and IPython.display.Image: no matplotlib backend needed)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def widget_size(image_hw: tuple[int, int], box: tuple[int, int] = WIDGET_BOX) -> tuple[int, int]:
    """(width, height) in CSS px of the interactive view's figure: the image fitted into ``box``, plus room for the
    colour bar and the title."""
    h, w = image_hw
    scale = min(box[0] / w, box[1] / h)
    return round(w * scale) + 90, round(h * scale) + 30


def block_figure(maps: ImageMaps, block: BlockRef, size: tuple[int, int]) -> Figure:
    """One block's map over the image with its colour bar, ``size`` CSS px (at 100 dpi)."""
    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100, layout="constrained")
    ax = fig.subplots()
    overlay(ax, maps.image, maps.gc[block], f"image {maps.image_id}, {block.label}")
    colour_bar(fig, ax)
    return fig


def interactive_view(results: list[ImageMaps]):
    """An ipywidgets view: choose image, stage and block; shows that block's map over the image.

    The picture is drawn at twice its displayed size and shown at a fixed size that fits ``WIDGET_BOX`` (sharp,
    never stretched to the output's width; the controls above stay in view for portrait images). The controls
    are labelled ``image``, ``stage`` and ``block`` and carry the classes ``gcrepro-attention-{image,stage,block}``
    (the picture ``gcrepro-attention-picture``) for whoever drives the page."""
    import ipywidgets as widgets

    if not results:
        raise ValueError("no images to show")
    stages = sorted({b.stage for b in results[0].gc})
    image_w = widgets.Dropdown(options=[(f"image {m.image_id}", i) for i, m in enumerate(results)], description="image")
    stage_w = widgets.Dropdown(options=[(STAGE_NAMES.get(s, str(s)), s) for s in stages], description="stage")
    block_w = widgets.IntSlider(min=0, description="block")
    picture = widgets.Image(format="png")
    guide = widgets.HTML(f"<small>{GUIDE}</small>")
    for name, w in (("image", image_w), ("stage", stage_w), ("block", block_w), ("picture", picture)):
        w.add_class(f"gcrepro-attention-{name}")

    def blocks_of(stage: int) -> list[BlockRef]:
        return sorted(b for b in results[image_w.value].gc if b.stage == stage)

    def redraw(*_):
        blocks = blocks_of(stage_w.value)
        block_w.max = len(blocks) - 1
        block = blocks[min(block_w.value, len(blocks) - 1)]
        maps = results[image_w.value]
        size = widget_size(maps.image.shape[:2])
        picture.layout = widgets.Layout(width=f"{size[0]}px", height=f"{size[1]}px", object_fit="contain")
        picture.value = png_bytes(block_figure(maps, block, size), dpi=100 * WIDGET_SCALE)

    for w in (image_w, stage_w, block_w):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([image_w, stage_w, block_w]), picture, guide])
