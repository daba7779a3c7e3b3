"""Global context (GC) block: Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond" (arXiv:1904.11492), exactly as SPEC §1 and ``mmcv.cnn.ContextBlock``.

    context = sum_j softmax_j(conv_mask(x)) * x_j              (pooling "att"; "avg" = mean)
    out     = x * sigmoid(T_mul(context)) + T_add(context)     (fusion "channel_mul", "channel_add")
    T       = Conv1x1(C->P) -> LayerNorm([P,1,1]) -> ReLU -> Conv1x1(P->C),  P = int(C * ratio)

Submodule names equal mmcv's (``conv_mask``, ``channel_add_conv.{0,1,3}``,
``channel_mul_conv.{0,1,3}``) so upstream GCNet and mmcv weights load without renaming.

``impl`` ("auto" | "reference" | "fused") is handed to ``gcrepro.ops.use_fused``, which decides
per call whether the paper's block runs as the compiled op ``gcrepro.ops.gc_block`` (built by
``pip install --no-build-isolation -e .``) or as the PyTorch math below. Attention maps are read
out by forward pre-hooks (``gcrepro.modeling.attention.capture_attention``), not by the block.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gcrepro import ops
from gcrepro.ops.reference import gc_context_reference

POOLING_TYPES = ("att", "avg")
FUSION_TYPES = ("channel_add", "channel_mul")


def _transform(channels: int, planes: int) -> nn.Sequential:
    # SPEC §1: Conv1x1(C->P) -> LayerNorm([P, 1, 1]) -> ReLU -> Conv1x1(P->C); indices 0, 1, 3 as mmcv.
    return nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1),
    )


class ContextBlock(nn.Module):
    """GC block. Input and output [N, C, H, W]; a freshly initialised block is the identity.

    Args:
        in_channels: C.
        ratio: bottleneck ratio of the transform, P = int(C * ratio) (paper: 1/16 "r16", 1/4 "r4").
        pooling_type: "att" (paper) or "avg" (ablation).
        fusion_types: non-empty subset of ("channel_add", "channel_mul"); paper: ("channel_add",).
        impl: "auto" | "reference" | "fused" (``gcrepro.ops.use_fused``; "fused" takes the paper's
            block only: att pooling with channel_add fusion).

    Attributes set by the backbone builder: ``stage`` (ResNet layer index, 2..4 for c3..c5) and
    ``block_index`` (index of the Bottleneck inside its layer).
    """

    def __init__(
        self,
        in_channels: int,
        ratio: float,
        pooling_type: str = "att",
        fusion_types: tuple[str, ...] = ("channel_add",),
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if pooling_type not in POOLING_TYPES:
            raise ValueError(f"ContextBlock pooling_type={pooling_type!r}: expected one of {POOLING_TYPES}")
        if isinstance(fusion_types, str) or not isinstance(fusion_types, (tuple, list)):
            raise ValueError(f"ContextBlock fusion_types={fusion_types!r}: expected a tuple like ('channel_add',)")
        fusion_types = tuple(fusion_types)
        bad = [f for f in fusion_types if f not in FUSION_TYPES]
        if not fusion_types or bad or len(set(fusion_types)) != len(fusion_types):
            raise ValueError(
                f"ContextBlock fusion_types={fusion_types!r}: expected a non-empty subset of {FUSION_TYPES} without repeats"
            )
        if not 0.0 < float(ratio) <= 1.0 or int(in_channels * ratio) < 1:
            raise ValueError(
                f"ContextBlock ratio={ratio!r} with in_channels={in_channels}: expected 0 < ratio <= 1 "
                f"and int(in_channels * ratio) >= 1 (paper: 1/16 or 1/4)"
            )
        if impl not in ops.IMPLS:
            raise ValueError(f"ContextBlock impl={impl!r}: expected one of {ops.IMPLS}")
        self.in_channels = in_channels
        self.ratio = float(ratio)
        self.planes = int(in_channels * ratio)  # SPEC §1: P = int(C * ratio)
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        self.impl = impl
        self.stage: int | None = None
        self.block_index: int | None = None
        self.paper_block = pooling_type == "att" and fusion_types == ("channel_add",)  # what the op implements

        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.channel_add_conv = _transform(in_channels, self.planes) if "channel_add" in fusion_types else None
        self.channel_mul_conv = _transform(in_channels, self.planes) if "channel_mul" in fusion_types else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SPEC §1 init: conv_mask kaiming-normal (fan_in, relu), bias 0; the LAST conv of each
        transform weight and bias 0 (so the block starts as the identity); LayerNorm 1/0; the first
        transform conv keeps PyTorch's default init."""
        if self.pooling_type == "att":
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is None:
                continue
            transform[0].reset_parameters()
            nn.init.ones_(transform[1].weight)
            nn.init.zeros_(transform[1].bias)
            nn.init.zeros_(transform[3].weight)
            nn.init.zeros_(transform[3].bias)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, ratio={self.ratio:g}, planes={self.planes}, "
            f"pooling_type={self.pooling_type!r}, fusion_types={self.fusion_types}, impl={self.impl!r}"
        )

    def forward(self, x: Tensor, identity: Tensor | None = None) -> Tensor:
        """x [N, C, H, W] -> x * sigmoid(T_mul(ctx)) + T_add(ctx), [N, C, H, W]. With ``identity``
        (the Bottleneck's residual, [N, C, H, W]): relu(that + identity), the Bottleneck's residual
        add and final ReLU, which the compiled op fuses into its channel add."""
        if ops.use_fused(self.impl, x, identity, paper_block=self.paper_block):
            return ops.gc_block(x, self.conv_mask, self.channel_add_conv, identity, relu=identity is not None)
        if self.pooling_type == "att":
            context = gc_context_reference(x, self.conv_mask.weight, self.conv_mask.bias)  # [N, C, 1, 1]
        else:
            context = nn.functional.adaptive_avg_pool2d(x, 1)  # [N, C, 1, 1]
        out = x  # [N, C, H, W]
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))  # [N, C, H, W]
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)  # [N, C, H, W]
        if identity is not None:
            out = torch.relu(out + identity)  # [N, C, H, W]
        return out
