// Host code of the whole GC block as two ops, gcrepro::gc_block and gcrepro::gc_block_backward
// (schemas: gc_ops.cpp; the autograd kernel joining them: autograd/gc_block_autograd.h), for the
// paper's block (att pooling, channel_add fusion) with the Bottleneck's epilogue:
//
//   out = x + T(context(x)) (+ residual) (then ReLU)
//   T   = Conv1x1(C->P) -> LayerNorm([P]) -> ReLU -> Conv1x1(P->C)   on [N, C] vectors
//
// Device-generic like gc_ops.h: the context and add passes run the device's `Kernels` (through
// the op bodies of gc_ops.h, called directly, not through the dispatcher); the transform on
// [N, C] vectors runs the device's `Kernels` too (CPU: plain loops, cpu/transform_kernels.h; CUDA:
// ATen ops, AtenTransform below) in the accumulation dtype (fp32; fp64 for fp64 x), also under
// autocast, which is off inside both ops.
#pragma once

#include "gc_ops.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <tuple>

namespace gcrepro {

// -> out [N, C, H, W] (x's dtype and layout), and for the backward, in the accumulation dtype:
// context [N, C], lse [N] (without conv_mask's bias, below), h [N, P] (conv1 output), mean and
// rstd [N, 1] (LayerNorm statistics of h), a [N, P] (ReLU output).
using BlockOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// -> grad_x, then the gradient of each parameter shaped and typed like it (mask_w, w1, b1, ln_w,
// ln_b, w2, b2), then grad_in: the gradient that reaches the residual (grad_out through the ReLU)
// when relu, else an empty [0] tensor (without the ReLU the residual's gradient is grad_out).
using BlockGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// P, the transform's width: conv1's weight is [P, C, 1, 1].
inline int64_t transform_width(const Tensor& w1, const char* op) {
  TORCH_CHECK(w1.dim() >= 1 && w1.size(0) >= 1, op, ": w1 (transform conv1 weight) must be [P, C, 1, 1], got shape ",
              w1.sizes());
  return w1.size(0);
}

// T and its backward with ATen ops, for any device (the CUDA kernels use these; the CPU has
// cpu/transform_kernels.h, which skips the per-call cost of ATen's small BLAS calls). Every
// argument is contiguous in the accumulation dtype.
struct AtenTransform {
  // -> (h [N, P], mean [N, 1], rstd [N, 1], a [N, P], term [N, C])
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> transform_forward(
      const Tensor& ctx, const Tensor& w1, const Tensor& b1, const Tensor& lnw, const Tensor& lnb, double eps,
      const Tensor& w2, const Tensor& b2) {
    Tensor h = at::addmm(b1, ctx, w1.t());
    auto [a, mean, rstd] = at::native_layer_norm(h, {w1.size(0)}, lnw, lnb, eps);
    a.relu_();
    Tensor term = at::addmm(b2, a, w2.t());
    return {h, mean, rstd, a, term};
  }
  // gt = dL/dterm [N, C] -> (g_ctx [N, C], gdot [N] = g_ctx . ctx, g_w1, g_b1, g_lnw, g_lnb, g_w2, g_b2)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> transform_backward(
      const Tensor& gt, const Tensor& ctx, const Tensor& h, const Tensor& mean, const Tensor& rstd, const Tensor& a,
      const Tensor& w1, const Tensor& lnw, const Tensor& lnb, const Tensor& w2) {
    Tensor g_w2 = gt.t().mm(a);                                  // [C, P]
    Tensor g_b2 = gt.sum(0);                                     // [C]
    const Tensor g_y = at::threshold_backward(gt.mm(w2), a, 0);  // [N, P], through the ReLU
    auto [g_h, g_lnw, g_lnb] =
        at::native_layer_norm_backward(g_y, h, {w1.size(0)}, mean, rstd, lnw, lnb, {true, true, true});
    Tensor g_w1 = g_h.t().mm(ctx);                               // [P, C]
    Tensor g_b1 = g_h.sum(0);                                    // [P]
    Tensor g_ctx = g_h.mm(w1);                                   // [N, C]
    Tensor gdot = (g_ctx * ctx).sum(1);                          // [N]
    return {g_ctx, gdot, g_w1, g_b1, g_lnw, g_lnb, g_w2, g_b2};
  }
};

// The block's saved lse is the log-sum-exp of the logits WITHOUT conv_mask's bias: the softmax
// ignores the bias, so neither direction needs it (it is still checked).
template <class Kernels>
BlockOutputs gc_block_op(const Tensor& x, const Tensor& mask_w, const c10::optional<Tensor>& mask_b, const Tensor& w1,
                         const Tensor& b1, const Tensor& ln_w, const Tensor& ln_b, double ln_eps, const Tensor& w2,
                         const Tensor& b2, const c10::optional<Tensor>& residual, bool relu) {
  constexpr const char* op = "gcrepro::gc_block";
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_x(x, op);
  const Dense4d d = as_dense(x);
  const int64_t N = d.N, C = d.C, P = transform_width(w1, op);
  const std::array<int64_t, 2> pc{P, C}, cp{C, P};
  const Tensor mw = small_acc(mask_w, x, C, {C}, op, "mask_w (conv_mask weight)");
  if (mask_b.has_value()) {
    check_small(*mask_b, x, 1, {}, op, "mask_b (conv_mask bias)");
  }
  const Tensor W1 = small_acc(w1, x, P * C, pc, op, "w1 (transform conv1 weight)");
  const Tensor B1 = small_acc(b1, x, P, {P}, op, "b1 (transform conv1 bias)");
  const Tensor LNW = small_acc(ln_w, x, P, {P}, op, "ln_w (LayerNorm weight)");
  const Tensor LNB = small_acc(ln_b, x, P, {P}, op, "ln_b (LayerNorm bias)");
  const Tensor W2 = small_acc(w2, x, C * P, cp, op, "w2 (transform conv2 weight)");
  const Tensor B2 = small_acc(b2, x, C, {C}, op, "b2 (transform conv2 bias)");
  Tensor context, lse;  // [N, C], [N]
  if (N == 0) {
    const auto acc_opts = x.options().dtype(acc_type(x.scalar_type()));
    context = at::empty({0, C}, acc_opts);
    lse = at::empty({0}, acc_opts);
  } else {
    std::tie(context, lse) = Kernels::context_forward(d, mw);
  }
  auto [h, mean, rstd, a, term] = Kernels::transform_forward(context, W1, B1, LNW, LNB, ln_eps, W2, B2);
  Tensor out = gc_add_op<Kernels>(x, term, residual, relu);  // [N, C, H, W]
  return {out, context, lse, h, mean, rstd, a};
}

// Backward of gc_block from the tensors it saved. out (the forward's out) is needed with relu only.
template <class Kernels>
BlockGrads gc_block_backward_op(const Tensor& grad_out, const Tensor& x, const Tensor& mask_w,
                                const c10::optional<Tensor>& mask_b, const Tensor& w1, const Tensor& b1,
                                const Tensor& ln_w, const Tensor& ln_b, const Tensor& w2, const Tensor& b2,
                                const Tensor& context, const Tensor& lse, const Tensor& h, const Tensor& mean,
                                const Tensor& rstd, const Tensor& a, const c10::optional<Tensor>& out, bool relu) {
  constexpr const char* op = "gcrepro::gc_block_backward";
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_x(x, op);
  const Dense4d d = as_dense(x);
  const int64_t N = d.N, C = d.C, P = transform_width(w1, op);
  const std::array<int64_t, 2> pc{P, C}, cp{C, P}, nc{N, C}, np{N, P}, n1{N, 1};
  if (mask_b.has_value()) {
    check_small(*mask_b, x, 1, {}, op, "mask_b");  // (its gradient is 0: the softmax cancels it)
  }
  // The add (and ReLU): the gradient of its input x (and the residual), and of T's output summed
  // over H*W.
  Tensor grad_in, grad_t;  // [N, C, H, W] x's dtype, [N, C] accumulation dtype
  if (relu) {
    TORCH_CHECK(out.has_value(), op, ": relu=True needs out (the forward's output)");
    TORCH_CHECK(out->sizes() == x.sizes(), op, ": out must have x's shape ", x.sizes(), ", got ", out->sizes());
    std::tie(grad_in, grad_t) = gc_add_relu_backward_op<Kernels>(grad_out, *out);
  } else {
    TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(), op,
                ": grad_out must have x's shape and dtype (", x.sizes(), ", ", x.scalar_type(), "), got (",
                grad_out.sizes(), ", ", grad_out.scalar_type(), ")");
    grad_in = grad_out;
    grad_t = at::sum(grad_out, {2, 3}, false, acc_type(x.scalar_type()));
  }
  // T backwards, [N, C] -> [N, P] -> [N, C].
  const Tensor ctx = small_acc(context, x, N * C, nc, op, "context");
  auto [g_ctx, gdot, g_w1, g_b1, g_lnw, g_lnb, g_w2, g_b2] = Kernels::transform_backward(
      grad_t, ctx, small_acc(h, x, N * P, np, op, "h"), small_acc(mean, x, N, n1, op, "mean"),
      small_acc(rstd, x, N, n1, op, "rstd"), small_acc(a, x, N * P, np, op, "a"),
      small_acc(w1, x, P * C, pc, op, "w1"), small_acc(ln_w, x, P, {P}, op, "ln_w"),
      small_acc(ln_b, x, P, {P}, op, "ln_b"), small_acc(w2, x, C * P, cp, op, "w2"));
  // The context, with the add's gradient for x summed into grad_x in the same pass.
  Tensor grad_x, g_mask_w;
  if (N == 0) {
    grad_x = empty_4d(d.t, d.nhwc);
    g_mask_w = at::zeros_like(mask_w);
  } else {
    const Tensor mw = small_acc(mask_w, x, C, {C}, op, "mask_w");
    const Tensor lse_nb = small_acc(lse, x, N, {N}, op, "lse");
    std::tie(grad_x, g_mask_w) = Kernels::context_backward(d, mw, g_ctx, gdot, lse_nb, in_layout(grad_in, d.nhwc));
    g_mask_w = like_param(g_mask_w, mask_w);
  }
  return {grad_x, g_mask_w, like_param(g_w1, w1), like_param(g_b1, b1), like_param(g_lnw, ln_w),
          like_param(g_lnb, ln_b), like_param(g_w2, w2), like_param(g_b2, b2),
          relu ? grad_in : at::empty({0}, x.options())};
}

}  // namespace gcrepro
