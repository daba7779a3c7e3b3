"""The paper's GC block (att pooling, channel_add fusion) as ONE op, ``gcrepro::gc_block``.

    out = x + T(context(x))  (+ residual, then ReLU: the Bottleneck's epilogue)
    T   = Conv1x1(C->P) -> LayerNorm([P, 1, 1]) -> ReLU -> Conv1x1(P->C)   on [N, C] vectors

Forward, backward and autograd are C++ (csrc/gc_block.h, csrc/autograd/gc_block_autograd.h): the
forward runs the context kernel, T on [N, C] in the accumulation dtype (fp32; fp64 for fp64 x;
also under autocast) and the add kernel; ``gcrepro::gc_block_backward`` runs the add's backward
(ReLU mask and sum over HW), T backwards and the context backward, which sums the add's gradient
for x into the pass that writes grad_x anyway. The autograd kernel (a C++ autograd function) joins
them: no Python runs per call. With no input requiring grad the op runs without an autograd node
and saves nothing; forward-mode AD raises (there is no jvp formula).

Besides ``out`` the op returns what its backward needs (the context, its log-sum-exp, T's hidden
values), all in the accumulation dtype: non-differentiable, like native_layer_norm's mean and rstd.
The context is kept unrounded: rounded to x's dtype (bf16) it would bias the weight gradients of T's
first conv and of conv_mask by ~2**-9 of their scale.

This module adds the two ops' fake kernels, which torch.compile traces (schemas: csrc/gc_ops.cpp).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gcrepro.ops.fused import acc_dtype, empty_4d


@torch.library.register_fake("gcrepro::gc_block")
def _gc_block_fake(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu):
    n, c = x.shape[:2]
    p = w1.shape[0]
    acc = acc_dtype(x.dtype)
    return (empty_4d(x), x.new_empty((n, c), dtype=acc), x.new_empty((n,), dtype=acc), x.new_empty((n, p), dtype=acc),
            x.new_empty((n, 1), dtype=acc), x.new_empty((n, 1), dtype=acc), x.new_empty((n, p), dtype=acc))


def _like(p: Tensor) -> Tensor:
    return torch.empty_like(p, memory_format=torch.contiguous_format)


@torch.library.register_fake("gcrepro::gc_block_backward")
def _gc_block_backward_fake(grad_out, x, mask_w, mask_b, w1, b1, ln_w, ln_b, w2, b2, context, lse, h, mean, rstd, a,
                            out, relu):
    grad_in = empty_4d(out) if relu else x.new_empty((0,))
    return (empty_4d(x), _like(mask_w), _like(w1), _like(b1), _like(ln_w), _like(ln_b), _like(w2), _like(b2), grad_in)
