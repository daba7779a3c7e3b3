"""GC block ops: a fused compiled path (csrc/) and the pure-PyTorch reference.

STUB written by the coordinator so other code can call the API today; the csrc
work replaces the bodies, keeping these signatures:

    fused_available(device) -> bool
    gc_context(x, mask_weight, mask_bias, impl) -> context [N, C, 1, 1]
    channel_add(x, term, residual=None, relu=False, impl) -> out [N, C, H, W]
"""
from __future__ import annotations

import torch
from torch import Tensor

from gcrepro.ops.reference import channel_add_reference, gc_context_reference


def fused_available(device: torch.device | str) -> bool:
    """True when the compiled op is built for this device type."""
    return False


def gc_context(x: Tensor, mask_weight: Tensor, mask_bias: Tensor | None, impl: str = "reference") -> Tensor:
    """Attention pooling: softmax_j(w . x_j + b) weighted sum of x over HW -> [N, C, 1, 1]."""
    return gc_context_reference(x, mask_weight, mask_bias)


def channel_add(x: Tensor, term: Tensor, residual: Tensor | None = None, relu: bool = False, impl: str = "reference") -> Tensor:
    """x + term (broadcast over HW), then + residual and ReLU when asked."""
    return channel_add_reference(x, term, residual, relu)
