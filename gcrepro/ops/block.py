"""The paper's GC block (att pooling, channel_add fusion) as ONE op, ``gcrepro::gc_block``.

    out = x + T(context(x))  (+ residual, then ReLU: the Bottleneck's epilogue)
    T   = Conv1x1(C->P) -> LayerNorm([P, 1, 1]) -> ReLU -> Conv1x1(P->C)   on [N, C] vectors

Composed of the compiled ops (fused.py): gc_context, then T on [N, C] in the accumulation dtype
(fp32; fp64 for fp64 x; also under autocast), then gc_add. Its backward runs gc_add_relu_backward
(or a sum over HW), T backwards (LayerNorm by aten's native_layer_norm_backward) and
gc_context_backward, which sums the add's gradient for x into the pass that writes grad_x anyway:
as separate autograd nodes autograd would add x's two gradients into a fresh tensor, one more write
and two more reads of an N*C*H*W tensor.

Registered with torch.library (custom_op, register_fake, register_autograd): with no input
requiring grad it runs without an autograd node and saves nothing; torch.compile traces it
through the fake kernel; forward-mode AD raises (custom_op alone would drop the tangents).
Besides ``out`` it returns what its backward needs (the context, its log-sum-exp, T's hidden
values), all in the accumulation dtype: non-differentiable, like native_layer_norm's mean and rstd.
The context is kept unrounded: rounded to x's dtype (bf16) it would bias the weight gradients of T's
first conv and of conv_mask by ~2**-9 of their scale.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from gcrepro.ops.fused import acc_dtype, add_backward, empty_4d, ops


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in dtype (skipping the call when it already is: the op runs at toy shapes where calls cost
    more than arithmetic)."""
    return t if t.dtype == dtype else t.to(dtype)


def _autocast_off(device_type: str):
    """The op computes in its own dtypes: autocast, which reaches into a custom op's body, is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


@torch.library.custom_op("gcrepro::gc_block", mutates_args=())
def gc_block(
    x: Tensor, mask_w: Tensor, mask_b: Tensor | None, w1: Tensor, b1: Tensor, ln_w: Tensor, ln_b: Tensor,
    ln_eps: float, w2: Tensor, b2: Tensor, residual: Tensor | None, relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [N, C, H, W]; conv_mask weight [1, C, 1, 1] and bias [1] (or None); T's conv1 weight
    [P, C, 1, 1] and bias [P], LayerNorm weight and bias [P, 1, 1] and eps, conv2 weight [C, P, 1, 1]
    and bias [C]; residual [N, C, H, W] or None; relu.
    -> out [N, C, H, W] (x's dtype, x's layout), and for the backward, in the accumulation dtype:
    context [N, C], lse [N], h [N, P] (conv1 output), mean and rstd [N, 1] (LayerNorm's statistics
    of h), a [N, P] (ReLU output)."""
    if torch.autograd.forward_ad._current_level >= 0:
        # custom_op has no forward-mode formula and would return the outputs without their tangents
        raise NotImplementedError(
            "gcrepro::gc_block has no forward-mode AD (jvp) formula: it cannot run inside "
            "torch.autograd.forward_ad.dual_level or torch.func.jvp / jacfwd / hessian; "
            "use the reference GC block there (ContextBlock(impl='reference'))"
        )
    n, c = x.shape[:2]
    p = w1.shape[0]
    acc = acc_dtype(x.dtype)
    with _autocast_off(x.device.type):
        context, lse = ops.gc_context(x, mask_w, mask_b)  # [N, C], [N] (acc)
        h = torch.addmm(_as(b1, acc), context, _as(w1.reshape(p, c), acc).t())  # [N, P]
        ln_wb = _as(ln_w.reshape(p), acc), _as(ln_b.reshape(p), acc)
        hn, mean, rstd = torch.native_layer_norm(h, [p], *ln_wb, ln_eps)  # [N, P], [N, 1], [N, 1]
        a = torch.relu(hn)  # [N, P]
        term = torch.addmm(_as(b2, acc), a, _as(w2.reshape(c, p), acc).t())  # [N, C]
        out = ops.gc_add(x, term, residual, relu)  # [N, C, H, W]
    return out, context, lse, h, mean, rstd, a


@gc_block.register_fake
def _gc_block_fake(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu):
    n, c = x.shape[:2]
    p = w1.shape[0]
    acc = acc_dtype(x.dtype)
    return (empty_4d(x), x.new_empty((n, c), dtype=acc), x.new_empty((n,), dtype=acc), x.new_empty((n, p), dtype=acc),
            x.new_empty((n, 1), dtype=acc), x.new_empty((n, 1), dtype=acc), x.new_empty((n, p), dtype=acc))


def _setup_context(ctx, inputs, output) -> None:
    x, mask_w, mask_b, w1, b1, ln_w, ln_b, _eps, w2, b2, residual, relu = inputs
    out, context, lse, h, mean, rstd, a = output
    ctx.mark_non_differentiable(context, lse, h, mean, rstd, a)
    ctx.set_materialize_grads(False)  # (no zero tensors for them in the backward)
    ctx.relu = relu
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, mask_w, mask_b, w1, b1, ln_w, ln_b, w2, b2, context, lse, h, mean, rstd, a,
                          out if relu else None)


def _backward(ctx, grad_out: Tensor | None, *_non_differentiable):
    if grad_out is None:  # out got no gradient (grads are not materialised): nothing to propagate
        return (None,) * 12
    x, mask_w, mask_b, w1, b1, ln_w, ln_b, w2, b2, context, lse, h, mean, rstd, a, out = ctx.saved_tensors
    n, c = x.shape[:2]
    p = w1.shape[0]
    acc = h.dtype
    with _autocast_off(x.device.type):
        # The add (and ReLU): gradient of its input x (and residual), and of T's output summed over HW.
        grad_in, grad_t = add_backward(grad_out, out, ctx.relu)  # [N, C, H, W], [N, C] acc
        # T backwards, [N, C] -> [N, P] -> [N, C].
        g_w2 = grad_t.t() @ a  # [C, P]
        g_b2 = grad_t.sum(0)  # [C]
        g_hn = (grad_t @ _as(w2.reshape(c, p), acc)) * (a > 0)  # [N, P], through the ReLU
        g_h, g_lnw, g_lnb = torch.ops.aten.native_layer_norm_backward(
            g_hn, h, [p], mean, rstd, _as(ln_w.reshape(p), acc), _as(ln_b.reshape(p), acc), [True, True, True]
        )  # [N, P], [P], [P]
        g_w1 = g_h.t() @ context  # [P, C]
        g_b1 = g_h.sum(0)  # [P]
        g_context = g_h @ _as(w1.reshape(p, c), acc)  # [N, C]
        # The context, with the add's gradient for x summed into grad_x in the same pass.
        grad_x, g_mask_w = ops.gc_context_backward(g_context, None, x, mask_w, mask_b, context, lse, grad_in)
    grad_mask_b = None if mask_b is None else torch.zeros_like(mask_b)  # the softmax cancels the bias
    return (
        grad_x, g_mask_w, grad_mask_b,
        _as(g_w1, w1.dtype).view(w1.shape), _as(g_b1, b1.dtype),
        _as(g_lnw, ln_w.dtype).view(ln_w.shape), _as(g_lnb, ln_b.dtype).view(ln_b.shape), None,
        _as(g_w2, w2.dtype).view(w2.shape), _as(g_b2, b2.dtype),
        grad_in if ctx.has_residual else None, None,
    )


gc_block.register_autograd(_backward, setup_context=_setup_context)
