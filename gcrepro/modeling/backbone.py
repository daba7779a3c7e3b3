"""ResNet-50/101 and ResNeXt-101 32x4d backbones with GC blocks and DCN (SPEC §2).

'pytorch' style Bottleneck (stride on the 3x3 conv). Module and state-dict names equal
torchvision's ``ResNet`` (conv1, bn1, relu, maxpool, layer1..layer4; ``layerI.J.{conv1, bn1,
conv2, bn2, conv3, bn3, downsample.0, downsample.1}``) plus ``layerI.J.context_block.*`` (GC) and
``layerI.J.conv2_offset`` (DCN), so torchvision/ImageNet weights load and the module plugs into
``torchvision.models.detection.backbone_utils.BackboneWithFPN`` (return layers layer1..layer4).
There is no avgpool/fc: a detection backbone ends at layer4.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from gcrepro.modeling.context_block import ContextBlock
from gcrepro.modeling.norm import NORM_KINDS, make_norm

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # Bottlenecks per layer1..layer4
EXPANSION = 4  # Bottleneck output channels = planes * 4
DCN_OFFSET_CHANNELS = 18  # 1 deformable group x 2 (dx, dy) x 3 x 3 taps (SPEC §2)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups; optionally deformable) -> 1x1, [GC block], + identity, ReLU.

    The GC block sits after conv3 + bn3 and BEFORE the residual add and final ReLU (SPEC §1);
    it receives both so its epilogue can fuse them.
    """

    def __init__(
        self,
        *,
        inplanes: int,
        planes: int,
        stride: int,
        groups: int,
        width_per_group: int,
        norm: str,
        with_gcb: bool,
        gcb_ratio: float,
        with_dcn: bool,
        gc_impl: str,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # torchvision's ResNeXt width rule
        outplanes = planes * EXPANSION
        self.stride = stride
        self.with_dcn = with_dcn
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = make_norm(norm, width)
        if with_dcn:
            # SPEC §2: deformable 3x3 (groups as the block, 1 deformable group, not modulated) and
            # its own 3x3 offset conv with bias, zero-initialised (mmdet), so it starts as conv2.
            self.conv2_offset = nn.Conv2d(width, DCN_OFFSET_CHANNELS, kernel_size=3, stride=stride, padding=1)
            self.conv2 = DeformConv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        else:
            self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = make_norm(norm, outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != outplanes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
                make_norm(norm, outplanes),
            )
        self.context_block: ContextBlock | None = None
        if with_gcb:
            self.context_block = ContextBlock(
                outplanes, gcb_ratio, pooling_type="att", fusion_types=("channel_add",), impl=gc_impl
            )

    def forward(self, x: Tensor) -> Tensor:
        # x [N, Cin, H, W]
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))  # [N, width, H, W]
        if self.with_dcn:
            offset = self.conv2_offset(out)  # [N, 18, H/s, W/s]
            out = self.conv2(out, offset)  # [N, width, H/s, W/s]
        else:
            out = self.conv2(out)  # [N, width, H/s, W/s]
        out = self.relu(self.bn2(out))  # [N, width, H/s, W/s]
        out = self.bn3(self.conv3(out))  # [N, Cout, H/s, W/s]
        if self.downsample is not None:
            identity = self.downsample(x)  # [N, Cout, H/s, W/s]
        if self.context_block is not None:
            return self.context_block(out, identity)  # relu(gc(out) + identity)
        out = out + identity  # [N, Cout, H/s, W/s]
        return self.relu(out)


class ResLayer(nn.Sequential):
    """One ResNet stage (layer1..layer4). A frozen stage keeps ``training == False`` under
    ``.train()``, also after ``IntermediateLayerGetter`` re-parents it."""

    def __init__(self, *blocks: nn.Module, frozen: bool = False) -> None:
        super().__init__(*blocks)
        self.frozen = frozen

    def train(self, mode: bool = True) -> "ResLayer":
        return super().train(mode and not self.frozen)


class ResNet(nn.Module):
    """Detection ResNet/ResNeXt; forward returns the layer4 map. Use ``build_resnet`` to make one.

    Attributes: ``out_channels_list`` (channels of layer1..layer4), ``depth``, ``groups``,
    ``width_per_group``, ``base_width``, ``norm``, ``frozen_stages``.
    """

    def __init__(
        self,
        *,
        depth: int,
        groups: int,
        width_per_group: int,
        norm: str,
        stage_with_gcb: tuple[bool, bool, bool, bool],
        gcb_ratio: float,
        stage_with_dcn: tuple[bool, bool, bool, bool],
        frozen_stages: int,
        base_width: int,
        gc_impl: str,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.groups = groups
        self.width_per_group = width_per_group
        self.base_width = base_width
        self.norm = norm
        self.frozen_stages = frozen_stages

        def norm_for(stage: int) -> str:
            # Frozen stages (stem = 0) normalise with fixed statistics in every mode: identical to
            # mmdet's frozen BN/SyncBN in eval mode, and safe whatever .train() calls reach them.
            return "fixbn" if stage <= frozen_stages else norm

        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm_for(0), base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = base_width
        self.out_channels_list: list[int] = []
        for i, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            stage = i + 1  # layer index: layer2..layer4 are c3..c5
            planes = base_width * 2**i
            blocks = []
            for j in range(num_blocks):
                block = Bottleneck(
                    inplanes=inplanes,
                    planes=planes,
                    stride=(1 if i == 0 else 2) if j == 0 else 1,
                    groups=groups,
                    width_per_group=width_per_group,
                    norm=norm_for(stage),
                    with_gcb=stage_with_gcb[i],
                    gcb_ratio=gcb_ratio,
                    with_dcn=stage_with_dcn[i],
                    gc_impl=gc_impl,
                )
                if block.context_block is not None:
                    block.context_block.stage = stage
                    block.context_block.block_index = j
                blocks.append(block)
                inplanes = planes * EXPANSION
            self.add_module(f"layer{stage}", ResLayer(*blocks, frozen=stage <= frozen_stages))
            self.out_channels_list.append(inplanes)
        self.out_channels = inplanes
        self._init_weights()
        self._freeze()

    def _init_weights(self) -> None:
        # torchvision's ResNet init: convs kaiming-normal fan_out/relu, norms weight 1 bias 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # sub-module inits that the generic pass above overwrote
            if isinstance(m, ContextBlock):
                m.reset_parameters()
            elif isinstance(m, Bottleneck) and m.with_dcn:
                nn.init.zeros_(m.conv2_offset.weight)  # mmdet: offsets start at 0
                nn.init.zeros_(m.conv2_offset.bias)

    def frozen_modules(self) -> list[nn.Module]:
        """Stem and layer1..layer{frozen_stages} (mmdet's frozen_stages; -1 freezes nothing)."""
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        # x [N, 3, H, W]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [N, base, H/4, W/4]
        x = self.layer1(x)  # [N, 4 base, H/4, W/4]
        x = self.layer2(x)  # [N, 8 base, H/8, W/8]
        x = self.layer3(x)  # [N, 16 base, H/16, W/16]
        return self.layer4(x)  # [N, 32 base, H/32, W/32]


def build_resnet(
    *,
    depth: int,
    groups: int,
    width_per_group: int,
    norm: str,
    stage_with_gcb: tuple[bool, bool, bool, bool],
    gcb_ratio: float,
    stage_with_dcn: tuple[bool, bool, bool, bool],
    frozen_stages: int = 1,
    base_width: int = 64,
    gc_impl: str = "auto",
    pretrained: str | None = None,
) -> ResNet:
    """Build a detection backbone.

    Paper settings (SPEC §2): ResNet-50/101 ``groups=1, width_per_group=64``; ResNeXt-101 32x4d
    ``groups=32, width_per_group=4``; GC in c3-c5 ``stage_with_gcb=(False, True, True, True)`` with
    ``gcb_ratio`` 1/16 or 1/4; DCN in c3-c5 ``stage_with_dcn=(False, True, True, True)``;
    ``frozen_stages=1`` (stem + layer1). ``norm``: "fixbn" | "syncbn" | "bn". ``base_width`` scales
    every width (64 = paper). ``pretrained``: a torchvision weights name or a local file, loaded
    with strict=False (see ``gcrepro.modeling.weights``).
    """
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"build_resnet depth={depth!r}: expected one of {tuple(STAGE_BLOCKS)}")
    if norm not in NORM_KINDS:
        raise ValueError(f"build_resnet norm={norm!r}: expected one of {NORM_KINDS}")
    for name, flags in (("stage_with_gcb", stage_with_gcb), ("stage_with_dcn", stage_with_dcn)):
        if len(tuple(flags)) != 4 or not all(isinstance(f, bool) for f in flags):
            raise ValueError(f"build_resnet {name}={flags!r}: expected 4 bools for layer1..layer4 (c2..c5)")
    if not -1 <= frozen_stages <= 4:
        raise ValueError(f"build_resnet frozen_stages={frozen_stages!r}: expected -1..4 (1 = stem + layer1)")
    if groups < 1 or width_per_group < 1 or base_width < 1 or int(base_width * width_per_group / 64.0) < 1:
        raise ValueError(
            f"build_resnet groups={groups}, width_per_group={width_per_group}, base_width={base_width}: "
            "need positive values with int(base_width * width_per_group / 64) >= 1"
        )
    model = ResNet(
        depth=depth,
        groups=groups,
        width_per_group=width_per_group,
        norm=norm,
        stage_with_gcb=tuple(stage_with_gcb),
        gcb_ratio=gcb_ratio,
        stage_with_dcn=tuple(stage_with_dcn),
        frozen_stages=frozen_stages,
        base_width=base_width,
        gc_impl=gc_impl,
    )
    if pretrained is not None:
        from gcrepro.modeling.weights import load_pretrained

        load_pretrained(model, pretrained)
    return model


def gc_parameter_count(model: nn.Module) -> int:
    """Number of parameters inside ContextBlocks (the GC overhead)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, ContextBlock) for p in m.parameters())


__all__ = ["Bottleneck", "ResLayer", "ResNet", "build_resnet", "gc_parameter_count"]
