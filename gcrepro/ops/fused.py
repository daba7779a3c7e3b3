"""Python side of the compiled GC ops (csrc/): their fake kernels, for torch.compile.

Imported by gcrepro.ops only when gcrepro._C is loaded (the schemas live there). The ops are the
forward and backward kernels of the GC block; gcrepro::gc_block (block.py) composes them into one
differentiable op. They carry no autograd formula of their own.

Ops (namespace torch.ops.gcrepro, schemas in csrc/gc_ops.cpp):
    gc_context(x, w, b?) -> (context [N, C], lse [N])
    gc_context_backward(grad_context, grad_lse?, x, w, b?, context, lse, grad_x_add?) -> (grad_x, grad_w)
        grad_x_add: a gradient for x from elsewhere, summed into grad_x in the same pass
    gc_add(x, t, residual?, relu) -> out [N, C, H, W]
    gc_add_relu_backward(grad_out, out) -> (grad_in, grad_t [N, C])
context, lse and grad_t use the accumulation dtype: fp32, or fp64 for fp64 inputs (the context
unrounded: the transform and the backward use it). Outputs shaped like x
are contiguous, or channels_last when x is channels_last (and not also contiguous).
"""
from __future__ import annotations

import torch
from torch import Tensor

ops = torch.ops.gcrepro


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_4d(x: Tensor) -> Tensor:
    """Mirror of empty_4d in csrc/gc_ops.h: the dense layout the kernels write."""
    nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)


@torch.library.register_fake("gcrepro::gc_context")
def _gc_context_fake(x: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
    n, c = x.shape[0], x.shape[1]
    acc = acc_dtype(x.dtype)
    return x.new_empty((n, c), dtype=acc), x.new_empty((n,), dtype=acc)


@torch.library.register_fake("gcrepro::gc_context_backward")
def _gc_context_backward_fake(grad_context, grad_lse, x, w, b, context, lse, grad_x_add=None) -> tuple[Tensor, Tensor]:
    return empty_4d(x), torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("gcrepro::gc_add")
def _gc_add_fake(x: Tensor, t: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
    return empty_4d(x)


@torch.library.register_fake("gcrepro::gc_add_relu_backward")
def _gc_add_relu_backward_fake(grad_out: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    return empty_4d(out), out.new_empty(out.shape[:2], dtype=acc_dtype(out.dtype))


def add_backward(grad: Tensor, out: Tensor | None, relu: bool) -> tuple[Tensor, Tensor]:
    """Backward of gc_add: (gradient of its x (and residual) input [N, C, H, W], of the channel term
    summed over HW [N, C] in the accumulation dtype). `out` (the op's output) is needed for the ReLU."""
    if relu:
        return ops.gc_add_relu_backward(grad, out)  # one pass: mask, store, sum over HW
    return grad, grad.sum(dim=(2, 3), dtype=acc_dtype(grad.dtype))
