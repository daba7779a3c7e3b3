"""The paper's GC block (att pooling, channel_add fusion) as ONE autograd node over the compiled ops.

    out = x + T(context(x))  (+ residual, then ReLU: the Bottleneck's epilogue)
    T   = Conv1x1(C->P) -> LayerNorm([P, 1, 1]) -> ReLU -> Conv1x1(P->C)   on [N, C] vectors

Run as separate autograd nodes (gc_context -> transform -> gc_add), x gets two gradients, one
from the add (the incoming gradient itself, or its ReLU-masked copy) and one from the context,
and autograd sums them into a fresh tensor: one more write and two more reads of an N*C*H*W
tensor, and on CPU a fresh allocation that page-faults (benchmarks/RESULTS.md). As one node the
add's gradient goes into gc_context_backward (`grad_x_add`) and is summed in the pass that writes
grad_x anyway. The transform is a few [N, C] x [C, P] products: its forward and backward are
written out below in the accumulation dtype (fp32; fp64 for fp64 x), also under autocast.

Used by ContextBlock when it resolves to the fused implementation; the reference ContextBlock
(and gcrepro.ops.reference) is the oracle the tests compare it with.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gcrepro.ops.fused import acc_dtype, add_backward, ops


def _block_forward(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu):
    """The block's forward -> (out [N, C, H, W], what the backward needs: context [N, C], lse [N],
    and the transform's inputs and normalisation statistics in the accumulation dtype)."""
    c = x.shape[1]
    acc = acc_dtype(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        context, lse = ops.gc_context(x, mask_w, mask_b)  # [N, C] (x's dtype), [N]
        ctx_acc = context.to(acc)  # [N, C]
        w1m = w1.reshape(w1.shape[0], c).to(acc)  # [P, C]
        w2m = w2.reshape(c, w2.shape[1]).to(acc)  # [C, P]
        h = torch.addmm(b1.to(acc), ctx_acc, w1m.t())  # [N, P]
        # LayerNorm([P, 1, 1]) on [N, P]: biased variance, eps inside the root, as torch's.
        hn, mean, rstd = torch.native_layer_norm(
            h, [h.shape[1]], ln_w.reshape(-1).to(acc), ln_b.reshape(-1).to(acc), ln_eps
        )  # [N, P], [N, 1], [N, 1]
        a = torch.relu(hn)  # [N, P]
        term = torch.addmm(b2.to(acc), a, w2m.t())  # [N, C]
        out = ops.gc_add(x, term, residual, relu)  # [N, C, H, W]
    return out, (context, lse, ctx_acc, w1m, w2m, h, mean, rstd, hn, a)


class FusedGCBlock(torch.autograd.Function):
    """Inputs: x [N, C, H, W]; conv_mask weight [1, C, 1, 1] and bias [1] (or None); transform
    conv1 weight [P, C, 1, 1], bias [P]; LayerNorm weight, bias [P, 1, 1] and eps; conv2 weight
    [C, P, 1, 1], bias [C]; residual [N, C, H, W] or None; relu. Output [N, C, H, W], x's dtype."""

    @staticmethod
    def forward(ctx, x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu):
        out, saved = _block_forward(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu)
        ctx.relu = relu
        ctx.has_residual = residual is not None
        ctx.dtypes = (mask_w.dtype, w1.dtype, b1.dtype, ln_w.dtype, ln_b.dtype, w2.dtype, b2.dtype)
        ctx.save_for_backward(x, mask_w, mask_b, *saved, ln_w, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, mask_w, mask_b, context, lse, ctx_acc, w1m, w2m, h, mean, rstd, hn, a, ln_w, out = ctx.saved_tensors
        acc = ctx_acc.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_hat = (h - mean) * rstd  # [N, P], LayerNorm's normalised input
            grad_out = grad_out.to(x.dtype)
            # The add (and ReLU): gradient of its input, and of the channel term summed over HW.
            grad_in, grad_t = add_backward(grad_out, out, ctx.relu)  # [N, C, H, W], [N, C] acc
            # The transform, backwards: [N, C] -> grads of conv2, ReLU, LayerNorm, conv1, context.
            g_b2 = grad_t.sum(0)  # [C]
            g_w2 = grad_t.t() @ a  # [C, P]
            g_hn = (grad_t @ w2m) * (hn > 0)  # [N, P]
            g_lnw = (g_hn * x_hat).sum(0)  # [P]
            g_lnb = g_hn.sum(0)  # [P]
            g_xhat = g_hn * ln_w.reshape(-1).to(acc)  # [N, P]
            g_h = rstd * (g_xhat - g_xhat.mean(1, keepdim=True) - x_hat * (g_xhat * x_hat).mean(1, keepdim=True))
            g_w1 = g_h.t() @ ctx_acc  # [P, C]
            g_b1 = g_h.sum(0)  # [P]
            g_context = g_h @ w1m  # [N, C]
            # The context, with the add's gradient summed into grad_x in the same pass.
            grad_x, grad_mask_w = ops.gc_context_backward(g_context, None, x, mask_w, mask_b, context, lse, grad_in)
        mw_t, w1_t, b1_t, lnw_t, lnb_t, w2_t, b2_t = ctx.dtypes
        p, c = w1m.shape
        grad_mask_b = None if mask_b is None else torch.zeros_like(mask_b)  # the softmax cancels the bias
        return (
            grad_x, grad_mask_w.to(mw_t), grad_mask_b,
            g_w1.to(w1_t).view(p, c, 1, 1), g_b1.to(b1_t),
            g_lnw.to(lnw_t).view(p, 1, 1), g_lnb.to(lnb_t).view(p, 1, 1), None,
            g_w2.to(w2_t).view(c, p, 1, 1), g_b2.to(b2_t),
            grad_in if ctx.has_residual else None, None,
        )


def gc_block_fused(
    x: Tensor, conv_mask: torch.nn.Conv2d, transform: torch.nn.Sequential, residual: Tensor | None, relu: bool
) -> Tensor:
    """x [N, C, H, W] -> x + transform(context(x)) (+ residual) (ReLU), [N, C, H, W], as one node.

    conv_mask: Conv2d(C, 1, 1); transform: ContextBlock's channel_add_conv (Conv2d, LayerNorm,
    ReLU, Conv2d)."""
    conv1, norm, conv2 = transform[0], transform[1], transform[3]
    args = (x, conv_mask.weight, conv_mask.bias, conv1.weight, conv1.bias, norm.weight, norm.bias, norm.eps,
            conv2.weight, conv2.bias, residual, relu)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args)
    # Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) carries tangents on tensors that
    # do not require grad: it must meet the autograd.Function (which says it has no jvp), never
    # the bare ops (which would drop the tangent silently).
    forward_ad = torch.autograd.forward_ad._current_level >= 0
    if needs_grad or forward_ad:
        return FusedGCBlock.apply(*args)
    return _block_forward(*args)[0]  # inference: no autograd node, nothing kept
