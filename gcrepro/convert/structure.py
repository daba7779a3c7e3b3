"""What a state dict (in gcrepro names) is: ``read_structure(mapped, where) -> Structure``.

Read from keys and shapes only:

- depth: Bottlenecks per stage (layer3: 6 -> ResNet-50, 23 -> ResNet-101);
- ResNeXt groups and width: ``layer1.0.conv2.weight`` is [width, width / groups, 3, 3] and
  width = groups * width_per_group * (stem width / 64) (torchvision's and mmdetection's rule);
- GC: the stages whose Bottlenecks hold ``context_block``; ratio = P / C of ``channel_add_conv.0``;
- DCN: the stages whose Bottlenecks hold ``conv2_offset``;
- heads: cascade stages (``box_heads.S``), 2fc (``fc6``) or 4conv1fc (shared convs, with or without
  a norm), the class count (``cls_score`` rows, background included) and every width a
  ``ModelConfig`` sets (stem, FPN, box fc and convs, mask convs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from torch import Tensor

from gcrepro.convert.classes import num_classes_of
from gcrepro.convert.errors import ConvertError
from gcrepro.convert.keymap import Mapped

BODY = "backbone.body"
STAGES = (1, 2, 3, 4)  # layer1..layer4 = c2..c5
GC_RATIOS = {Fraction(1, 16): "r16", Fraction(1, 4): "r4"}  # SPEC §1


@dataclass(frozen=True)
class Structure:
    """The architecture a state dict describes; ``keys[what]`` names the key each fact was read from."""

    stage_blocks: tuple[int, ...]
    base_width: int
    groups: int
    width_per_group: int
    gc_stages: tuple[bool, ...]
    gc_ratio: Fraction | None
    dcn_stages: tuple[bool, ...]
    cascade_stages: int  # 0: Mask R-CNN
    head: str  # "2fc" | "4conv1fc"
    head_norm: bool  # a norm after the box-head convs (4conv1fc)
    fpn_norm: bool
    num_classes: int
    widths: dict[str, int]  # ModelConfig width fields: base_width, fpn_channels, box_fc_dim, ...
    keys: dict[str, str] = field(default_factory=dict)  # fact -> the gcrepro key it was read from
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # fact -> that key's shape

    @property
    def depth(self) -> int | None:
        return {6: 50, 23: 101}.get(self.stage_blocks[2])

    @property
    def backbone(self) -> str:
        """"R50" | "R101" | "X101-32x4d"; an unknown depth shows its blocks per stage."""
        depth = self.depth or f"?{self.stage_blocks}"
        if (self.groups, self.width_per_group) == (1, 64):
            return f"R{depth}"
        return f"X{depth}-{self.groups}x{self.width_per_group}d"

    @property
    def gc(self) -> str:
        """"none" or e.g. "GC r16 in c3-c5"."""
        if not any(self.gc_stages):
            return "none"
        ratio = GC_RATIOS.get(self.gc_ratio, f"ratio {self.gc_ratio}")
        return f"GC {ratio} in {stage_names(self.gc_stages)}"

    def describe(self) -> str:
        kind = f"Cascade ({self.cascade_stages} stages)" if self.cascade_stages else "Mask R-CNN"
        dcn = f", DCN in {stage_names(self.dcn_stages)}" if any(self.dcn_stages) else ""
        gc = f", {self.gc}" if any(self.gc_stages) else ""
        return f"{kind}, {self.backbone}{dcn}{gc}, {self.head} head, {self.num_classes} classes"


def stage_names(stages: tuple[bool, ...]) -> str:
    """(False, True, True, True) -> "c3-c5"; (True, False, True, False) -> "c2,c4"."""
    on = [i + 2 for i, flag in enumerate(stages) if flag]
    if on and on == list(range(on[0], on[-1] + 1)) and len(on) > 1:
        return f"c{on[0]}-c{on[-1]}"
    return ",".join(f"c{c}" for c in on) or "none"


def _need(mapped: Mapped, key: str, what: str, where: str) -> Tensor:
    if key not in mapped.tensors:
        raise ConvertError(f"{where}: no {mapped.source_key(key)} ({what}): not a ResNet-FPN Mask R-CNN checkpoint")
    return mapped.tensors[key]


def _count(t: dict[str, Tensor], template: str) -> int:
    """How many of ``template.format(0), template.format(1), ...`` are keys, counting from 0."""
    n = 0
    while template.format(n) in t:
        n += 1
    return n


def _backbone(mapped: Mapped, where: str, keys: dict[str, str], shapes: dict[str, tuple]) -> dict:
    t = mapped.tensors
    blocks = tuple(_count(t, f"{BODY}.layer{s}.{{}}.conv1.weight") for s in STAGES)
    base = int(_need(mapped, f"{BODY}.conv1.weight", "the stem conv", where).shape[0])
    keys["groups"] = f"{BODY}.layer1.0.conv2.weight"
    conv2 = _need(mapped, keys["groups"], "the first 3x3 conv", where)  # [width, width / groups, 3, 3]
    shapes["groups"] = tuple(conv2.shape)
    width, per_group = int(conv2.shape[0]), int(conv2.shape[1])
    groups = width // per_group
    gc = tuple(f"{BODY}.layer{s}.0.context_block.conv_mask.weight" in t for s in STAGES)
    ratio = None
    if any(gc):
        keys["gc_ratio"] = f"{BODY}.layer{gc.index(True) + 1}.0.context_block.channel_add_conv.0.weight"
        transform = _need(mapped, keys["gc_ratio"], "the GC transform's first conv", where)  # [P, C, 1, 1]
        shapes["gc_ratio"] = tuple(transform.shape)
        planes, channels = transform.shape[:2]
        ratio = next((r for r in GC_RATIOS if int(channels * r) == planes), Fraction(int(planes), int(channels)))
    keys["gc"] = f"{BODY}.layer{gc.index(True) + 1 if any(gc) else 2}.0.context_block.conv_mask.weight"
    dcn = tuple(f"{BODY}.layer{s}.0.conv2_offset.weight" in t for s in STAGES)
    keys["dcn"] = f"{BODY}.layer{dcn.index(True) + 1 if any(dcn) else 2}.0.conv2_offset.weight"
    return dict(stage_blocks=blocks, base_width=base, groups=groups,
                width_per_group=round(width / groups * 64 / base), gc_stages=gc, gc_ratio=ratio, dcn_stages=dcn)


def _heads(mapped: Mapped, where: str, keys: dict[str, str]) -> dict:
    t = mapped.tensors
    cascade = _count(t, "roi_heads.box_predictors.{}.cls_score.weight")
    box = "roi_heads.box_heads.0" if cascade else "roi_heads.box_head"
    mask = "roi_heads.mask_heads.0" if cascade else "roi_heads.mask_head"
    keys["cascade"] = f"{'roi_heads.box_predictors.0' if cascade else 'roi_heads.box_predictor'}.cls_score.weight"
    box_convs = _count(t, f"{box}.{{}}.0.weight")
    mask_convs = _count(t, f"{mask}.{{}}.0.weight")
    fpn = _need(mapped, "backbone.fpn.inner_blocks.0.0.weight", "the FPN's first lateral conv", where)
    widths: dict[str, int] = {"fpn_channels": int(fpn.shape[0])}
    if box_convs:
        keys["head"] = f"{box}.0.0.weight"
        widths["box_conv_dim"] = int(t[keys["head"]].shape[0])
        widths["box_num_convs"] = box_convs
        widths["box_fc_dim"] = int(_need(mapped, f"{box}.{box_convs + 1}.weight", "the head's fc", where).shape[0])
    else:
        keys["head"] = f"{box}.fc6.weight"
        widths["box_fc_dim"] = int(_need(mapped, keys["head"], "the box head's first fc", where).shape[0])
    if mask_convs:
        widths["mask_conv_dim"] = int(t[f"{mask}.0.0.weight"].shape[0])
        widths["mask_num_convs"] = mask_convs
    num_classes = num_classes_of(t)
    if num_classes is None:
        raise ConvertError(f"{where}: no box classifier (cls_score / fc_cls weight): not a Mask R-CNN checkpoint")
    keys["head_norm"] = f"{box}.0.1.weight"
    keys["fpn_norm"] = "backbone.fpn.inner_blocks.0.1.weight"
    return dict(cascade_stages=cascade, head="4conv1fc" if box_convs else "2fc", head_norm=keys["head_norm"] in t,
                fpn_norm=keys["fpn_norm"] in t, num_classes=num_classes, widths=widths)


def read_structure(mapped: Mapped, where: str) -> Structure:
    keys: dict[str, str] = {}
    shapes: dict[str, tuple] = {}
    backbone = _backbone(mapped, where, keys, shapes)
    heads = _heads(mapped, where, keys)
    heads["widths"] = {"base_width": backbone["base_width"], **heads["widths"]}
    return Structure(**backbone, **heads, keys=keys, shapes=shapes)
