"""GC attention maps of a detector, mapped back onto the input image.

Every GC block (c3-c5) computes softmax_j(conv_mask(x)_j) over the HW positions of
its input: one query-independent map per image. ``capture_maps`` runs the model's
own transform and backbone on one image inside ``capture_attention`` and returns
each block's map cropped to the un-padded region and upsampled to the image.

``nonlocal_maps`` is the comparison from the paper (its Fig. 2 observation):
a simplified non-local map, softmax over keys j of q_i . k_j / sqrt(C) with
q = k = the block's input x (no learned embeddings), for a few query points i.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import ExitStack

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

STAGE_NAMES = {2: "c3", 3: "c4", 4: "c5"}  # block.stage (layer2..layer4) -> the paper's stage name


@dataclasses.dataclass(frozen=True, order=True)
class BlockRef:
    stage: int  # 2..4 for c3..c5 (layer2..layer4)
    block_index: int  # position of the Bottleneck in its stage, from 0
    name: str  # qualified module name in the model

    @property
    def label(self) -> str:
        return f"{STAGE_NAMES.get(self.stage, f'stage{self.stage}')} b{self.block_index}"


@dataclasses.dataclass
class ImageMaps:
    """One image, its GC maps and (optionally) non-local maps for a few query points."""

    image: np.ndarray  # [H, W, 3] float in 0..1
    image_id: int
    gc: dict[BlockRef, np.ndarray]  # block -> [H, W] softmax map upsampled to the image (sums to ~1 over the valid area)
    nl_block: BlockRef | None = None
    nl_queries: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (y, x) in image pixels
    nl: np.ndarray | None = None  # [Q, H, W] non-local maps, one per query


def gc_blocks(model: nn.Module) -> list[BlockRef]:
    """The model's GC blocks (modules with ``.stage`` and ``.block_index`` and a ``conv_mask``), in stage/block order."""
    refs = [
        BlockRef(stage=int(m.stage), block_index=int(m.block_index), name=name)
        for name, m in model.named_modules()
        if hasattr(m, "conv_mask") and hasattr(m, "stage") and hasattr(m, "block_index")
    ]
    return sorted(refs)


def to_image(att: Tensor, *, padded_hw: tuple[int, int], resized_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """A feature-grid map [h, w] (over the padded input) -> [H, W] over the original image.

    The model resized the image to ``resized_hw`` and padded it to ``padded_hw``;
    upsample to the padded size, crop the padding, resize to the image.
    """
    m = att.detach().float().reshape(1, 1, *att.shape[-2:])  # [1, 1, h, w]
    m = F.interpolate(m, size=padded_hw, mode="bilinear", align_corners=False)  # [1, 1, Hp, Wp]
    m = m[..., : resized_hw[0], : resized_hw[1]]  # [1, 1, h', w'] valid region
    m = F.interpolate(m, size=image_hw, mode="bilinear", align_corners=False)  # [1, 1, H, W]
    return m[0, 0].cpu().numpy()


def nonlocal_maps(x: Tensor, queries: list[tuple[int, int]]) -> Tensor:
    """Simplified non-local attention: softmax_j(x_i . x_j / sqrt(C)) for each query i = (row, col).

    x: [C, h, w] the block's input. Returns [Q, h, w].
    """
    c, h, w = x.shape
    keys = x.reshape(c, h * w).float()  # [C, HW]
    q = torch.stack([keys[:, r * w + col] for r, col in queries], dim=0)  # [Q, C]
    logits = q @ keys / math.sqrt(c)  # [Q, HW]
    return logits.softmax(dim=-1).reshape(len(queries), h, w)  # [Q, h, w]


def query_similarity(maps: np.ndarray) -> float:
    """Mean pairwise cosine similarity of Q maps [Q, H, W] (1.0 = identical maps, whatever the query)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)  # fp32 maps: a cosine could round past 1 by ~1e-6
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    sim = flat @ flat.T
    q = len(maps)
    return float((sim.sum() - np.trace(sim)) / max(q * (q - 1), 1))


def default_queries(image_hw: tuple[int, int], boxes: Tensor | None, n_objects: int = 2) -> list[tuple[float, float]]:
    """Query points (y, x) in image pixels: the centres of the largest objects, then a background corner."""
    h, w = image_hw
    points: list[tuple[float, float]] = []
    if boxes is not None and len(boxes):
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for i in areas.argsort(descending=True)[:n_objects].tolist():
            x0, y0, x1, y1 = boxes[i].tolist()
            points.append(((y0 + y1) / 2, (x0 + x1) / 2))
    points.append((0.08 * h, 0.08 * w))
    if len(points) < 3:
        points.append((0.5 * h, 0.5 * w))
    return points


@torch.no_grad()
def capture_maps(
    model: nn.Module,
    image: Tensor,
    *,
    image_id: int = 0,
    boxes: Tensor | None = None,
    nl_block: BlockRef | None = None,
) -> ImageMaps:
    """GC maps of every block for one image [3, H, W] in 0..1 (and non-local maps of ``nl_block``,
    computed from that block's input)."""
    from gcrepro.modeling.attention import capture_attention

    model.eval()
    blocks = {b.name: b for b in gc_blocks(model)}
    device = next(model.parameters()).device
    image_hw = tuple(image.shape[-2:])
    inputs: dict[str, Tensor] = {}
    with ExitStack() as stack:
        if nl_block is not None:
            block = model.get_submodule(nl_block.name)
            handle = block.register_forward_pre_hook(lambda _m, args: inputs.__setitem__("x", args[0].detach()))
            stack.callback(handle.remove)
        maps = stack.enter_context(capture_attention(model))
        image_list, _ = model.transform([image.to(device)])  # resize + normalise + pad (the model's own)
        model.backbone(image_list.tensors)  # [1, 3, Hp, Wp] -> FPN features; GC blocks fill `maps`
        maps = dict(maps)
    padded_hw = tuple(image_list.tensors.shape[-2:])
    resized_hw = tuple(image_list.image_sizes[0])
    geometry = dict(padded_hw=padded_hw, resized_hw=resized_hw, image_hw=image_hw)
    gc = {blocks[name]: to_image(att[0], **geometry) for name, att in maps.items() if name in blocks}
    result = ImageMaps(image=image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), image_id=image_id, gc=gc)
    if nl_block is not None and "x" in inputs:
        x = inputs["x"][0]  # [C, h, w] over the padded input
        h, w = x.shape[-2:]
        queries = default_queries(image_hw, boxes)
        scale_y, scale_x = resized_hw[0] / image_hw[0], resized_hw[1] / image_hw[1]
        cells = [(min(int(y * scale_y * h / padded_hw[0]), h - 1), min(int(px * scale_x * w / padded_hw[1]), w - 1))
                 for y, px in queries]
        nl = nonlocal_maps(x, cells)  # [Q, h, w]
        result.nl_block = nl_block
        result.nl_queries = queries
        result.nl = np.stack([to_image(m, **geometry) for m in nl])
    return result
