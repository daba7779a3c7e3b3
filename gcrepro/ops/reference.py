"""Pure-PyTorch reference of the GC ops: the test oracle and the fallback."""
from __future__ import annotations

import torch
from torch import Tensor


def gc_attention(x: Tensor, mask_weight: Tensor, mask_bias: Tensor | None) -> Tensor:
    """Softmax attention over HW. x [N, C, H, W], mask_weight [1, C, 1, 1] -> [N, 1, H, W]."""
    n, c, h, w = x.shape
    logits = torch.nn.functional.conv2d(x, mask_weight, mask_bias)  # [N, 1, H, W]
    return logits.view(n, 1, h * w).softmax(dim=-1).view(n, 1, h, w)


def gc_context_reference(x: Tensor, mask_weight: Tensor, mask_bias: Tensor | None) -> Tensor:
    """Context [N, C, 1, 1] = sum_j softmax_j * x[:, :, j]."""
    n, c, h, w = x.shape
    attn = gc_attention(x, mask_weight, mask_bias).view(n, 1, h * w, 1)  # [N, 1, HW, 1]
    context = torch.matmul(x.reshape(n, 1, c, h * w), attn)  # [N, 1, C, 1] (reshape: x may be a strided view)
    return context.view(n, c, 1, 1)


def channel_add_reference(x: Tensor, term: Tensor, residual: Tensor | None = None, relu: bool = False) -> Tensor:
    """x [N, C, H, W] + term [N, C, 1, 1] (+ residual [N, C, H, W]) (then ReLU)."""
    out = x + term
    if residual is not None:
        out = out + residual
    return torch.relu(out) if relu else out
