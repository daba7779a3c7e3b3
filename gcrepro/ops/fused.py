"""Python side of the compiled GC ops (csrc/): fake kernels for torch.compile and autograd.

Imported by gcrepro.ops only when gcrepro._C is loaded (the schemas live there).

Ops (namespace torch.ops.gcrepro, schemas in csrc/gc_ops.cpp):
    gc_context(x, w, b?) -> (context [N, C], lse [N])          differentiable (x, w, b)
    gc_context_backward(grad_context, grad_lse?, x, w, b?, context, lse, grad_x_add?) -> (grad_x, grad_w)
        grad_x_add: a gradient for x from elsewhere, summed into grad_x in the same pass
    gc_add(x, t, residual?, relu) -> out [N, C, H, W]            differentiable (x, t, residual)
    gc_add_relu_backward(grad_out, out) -> (grad_in, grad_t [N, C])
lse and grad_t use the accumulation dtype: fp32, or fp64 for fp64 inputs. Outputs shaped like x
are contiguous, or channels_last when x is channels_last (and not also contiguous).
Double backward is not supported.
"""
from __future__ import annotations

import torch
from torch import Tensor

ops = torch.ops.gcrepro


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty_4d(x: Tensor) -> Tensor:
    """Mirror of empty_4d in csrc/gc_ops.h: the dense layout the kernels write."""
    nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)


@torch.library.register_fake("gcrepro::gc_context")
def _gc_context_fake(x: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
    n, c = x.shape[0], x.shape[1]
    return x.new_empty((n, c)), x.new_empty((n,), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("gcrepro::gc_context_backward")
def _gc_context_backward_fake(grad_context, grad_lse, x, w, b, context, lse, grad_x_add=None) -> tuple[Tensor, Tensor]:
    return _empty_4d(x), torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("gcrepro::gc_add")
def _gc_add_fake(x: Tensor, t: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
    return _empty_4d(x)


@torch.library.register_fake("gcrepro::gc_add_relu_backward")
def _gc_add_relu_backward_fake(grad_out: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    return _empty_4d(out), out.new_empty(out.shape[:2], dtype=acc_dtype(out.dtype))


def _gc_context_setup(ctx, inputs, output) -> None:
    x, w, b = inputs
    context, lse = output
    ctx.save_for_backward(x, w, b, context, lse)


def _gc_context_backward(ctx, grad_context: Tensor | None, grad_lse: Tensor | None):
    x, w, b, context, lse = ctx.saved_tensors
    if grad_context is None:
        grad_context = torch.zeros_like(context)
    grad_x, grad_w = ops.gc_context_backward(grad_context, grad_lse, x, w, b, context, lse)
    grad_b = None
    if b is not None and ctx.needs_input_grad[2]:
        # The softmax cancels b: d context / d b = 0 exactly, d lse / d b = 1 per sample.
        grad_b = torch.zeros_like(b) if grad_lse is None else grad_lse.sum().to(b.dtype).reshape(b.shape)
    return grad_x, grad_w, grad_b


def _gc_add_setup(ctx, inputs, output) -> None:
    x, t, residual, relu = inputs
    ctx.relu = relu
    ctx.has_residual = residual is not None
    ctx.t_shape, ctx.t_dtype = t.shape, t.dtype
    ctx.save_for_backward(output if relu else None)


def add_backward(grad: Tensor, out: Tensor | None, relu: bool) -> tuple[Tensor, Tensor]:
    """Backward of gc_add: (gradient of its x (and residual) input [N, C, H, W], of the channel term
    summed over HW [N, C] in the accumulation dtype). `out` (the op's output) is needed for the ReLU."""
    if relu:
        return ops.gc_add_relu_backward(grad, out)  # one pass: mask, store, sum over HW
    return grad, grad.sum(dim=(2, 3), dtype=acc_dtype(grad.dtype))


def _gc_add_backward(ctx, grad: Tensor):
    (out,) = ctx.saved_tensors
    grad_in, grad_t = add_backward(grad, out, ctx.relu)
    grad_t = grad_t.to(ctx.t_dtype).reshape(ctx.t_shape)
    return grad_in, grad_t, (grad_in if ctx.has_residual else None), None


torch.library.register_autograd("gcrepro::gc_context", _gc_context_backward, setup_context=_gc_context_setup)
torch.library.register_autograd("gcrepro::gc_add", _gc_add_backward, setup_context=_gc_add_setup)


def gc_context_fused(x: Tensor, mask_weight: Tensor, mask_bias: Tensor | None) -> Tensor:
    """x [N, C, H, W] -> context [N, C, 1, 1] with the compiled op."""
    context, _lse = ops.gc_context(x, mask_weight, mask_bias)  # [N, C], [N]
    return context.view(x.shape[0], x.shape[1], 1, 1)


def channel_add_fused(x: Tensor, term: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
    """x [N, C, H, W] + term [N, C, 1, 1] (+ residual) (ReLU) with the compiled op."""
    return ops.gc_add(x, term, residual, relu)
