"""Seeded, non-trivial weights for an mmdetection GCNet detector, so that a comparison can fail.

A freshly built detector is a poor test subject: the GC blocks' last convs are zero (each block is
the identity), DCN offsets are zero (a plain conv), BN statistics are 0/1. ``seed_weights`` draws
every parameter from one ``torch.Generator`` seeded with ``seed``, in ``named_modules`` order:

- convs and linears: He-normal, std sqrt(2 / fan_in) (FPN convs 1 / sqrt(fan_in): no ReLU between
  them); biases N(0, 0.05^2);
- BN and LayerNorm affine: weight U(0.5, 1.5), bias N(0, 0.2^2); a Bottleneck's last BN (bn3)
  weight U(0.05, 0.15): small residual branches keep the 33 blocks of R101 from amplifying float
  rounding (with U(0.2, 0.5) two exact implementations drift apart by 1e-3 by layer4);
- GC blocks: ``conv_mask`` std 4 / sqrt(C) (peaked, image-dependent attention); the last transform
  conv std 0.3 / sqrt(P), bias N(0, 0.1^2): the context adds about as much as the residual branch;
- DCN ``conv_offset``: std 0.5 / sqrt(fan_in), bias N(0, 0.5^2) (offsets ~1 px, fractional);

then calibrates scales, shifts and BN statistics on the image under test
(:mod:`mmdet_oracle.calibrate`). Everything depends only on ``seed``, the model and the image.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmdet_oracle.calibrate import calibrate_batchnorm, calibrate_roi_heads, calibrate_rpn, normalise_laterals
from mmdet_oracle.images import Batch

BN3_WEIGHT = (0.05, 0.15)  # U(low, high) of every Bottleneck's last BN weight: small residual branches
WEIGHT_RULES = (  # name fragment -> std multiplier on 1 / sqrt(fan_in)
    ("context_block.conv_mask", 4.0), ("context_block.channel_add_conv.3", 0.3), ("conv_offset", 0.5),
)


def _normal(g: torch.Generator, t: Tensor, std: float) -> None:
    t.copy_(torch.randn(t.shape, generator=g) * std)


def _uniform(g: torch.Generator, t: Tensor, low: float, high: float) -> None:
    t.copy_(torch.rand(t.shape, generator=g) * (high - low) + low)


def _fan_in(module: nn.Module, weight: Tensor) -> int:
    # conv [out, in/groups, kh, kw]; linear [out, in]; transposed conv [in, out, k, k] at stride k:
    # each output sums in_channels x 1 tap
    if isinstance(module, nn.ConvTranspose2d):
        return weight.shape[0]
    return int(math.prod(weight.shape[1:]))


def _weight_std(name: str, fan_in: int) -> float:
    for key, value in WEIGHT_RULES:
        if key in name:
            return value / math.sqrt(fan_in)
    return (1.0 if name.startswith("neck.") else math.sqrt(2.0)) / math.sqrt(fan_in)


def _bias_std(name: str) -> float:
    return 0.5 if "conv_offset" in name else 0.1 if "context_block" in name else 0.05


def set_parameters(model: nn.Module, g: torch.Generator) -> None:
    """Every parameter of ``model`` drawn from ``g`` by the rules above."""
    for name, module in model.named_modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            low, high = BN3_WEIGHT if name.endswith(".bn3") else (0.5, 1.5)
            _uniform(g, weight.data, low, high)
            _normal(g, bias.data, 0.2)
        elif isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            _normal(g, weight.data, _weight_std(name, _fan_in(module, weight)))
            if isinstance(bias, nn.Parameter):
                _normal(g, bias.data, _bias_std(name))
        elif list(module.parameters(recurse=False)):
            raise TypeError(f"mmdet_oracle.weights: no rule for the parameters of {name} ({type(module).__name__})")


def seed_weights(mm, *, seed: int, batch: Batch) -> tuple[Tensor, ...]:
    """All weights of ``mm`` (a ``build.MmdetModel``) from ``seed`` and ``batch``'s image:
    parameters by the rules above, then BN statistics, FPN laterals and output layers calibrated on
    ``batch``. Returns ``mmdet_features`` of ``batch`` under the final weights (the output layers
    do not change them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        set_parameters(mm.model, g)
    stages = calibrate_batchnorm(mm.model, batch.inputs)
    normalise_laterals(mm.model, stages)
    with torch.no_grad():
        features = mm.model.neck(stages)  # = mmdet_features(mm.model, batch): the backbone already ran
    calibrate_rpn(mm.model, features)
    calibrate_roi_heads(mm.model, batch, features)
    return features
