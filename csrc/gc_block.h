// Host code of the whole GC block as two ops, gcrepro::gc_block and gcrepro::gc_block_backward
// (schemas: gc_ops.cpp; the autograd kernel joining them: autograd/gc_block_autograd.h), for the
// paper's block (att pooling, channel_add fusion) with the Bottleneck's epilogue:
//
//   out = x + T(context(x)) (+ residual) (then ReLU)
//   T   = Conv1x1(C->P) -> LayerNorm([P]) -> ReLU -> Conv1x1(P->C)   on [N, C] vectors
//
// Device-generic like gc_ops.h: the context and add passes run the device's `Kernels` (through
// the op bodies of gc_ops.h, called directly, not through the dispatcher); the transform on
// [N, C] vectors runs ATen ops in the accumulation dtype (fp32; fp64 for fp64 x), also under
// autocast, which is off inside both ops.
#pragma once

#include "gc_ops.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <tuple>

namespace gcrepro {

// -> out [N, C, H, W] (x's dtype and layout), and for the backward, in the accumulation dtype:
// context [N, C], lse [N], h [N, P] (conv1 output), mean and rstd [N, 1] (LayerNorm statistics of
// h), a [N, P] (ReLU output).
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

template <class Kernels>
BlockOutputs gc_block_op(const Tensor& x, const Tensor& mask_w, const c10::optional<Tensor>& mask_b, const Tensor& w1,
                         const Tensor& b1, const Tensor& ln_w, const Tensor& ln_b, double ln_eps, const Tensor& w2,
                         const Tensor& b2, const c10::optional<Tensor>& residual, bool relu) {
  constexpr const char* op = "gcrepro::gc_block";
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_x(x, op);
  const int64_t C = x.size(1), P = transform_width(w1, op);
  const std::array<int64_t, 2> pc{P, C}, cp{C, P};
  const Tensor W1 = small_acc(w1, x, P * C, pc, op, "w1 (transform conv1 weight)");
  const Tensor B1 = small_acc(b1, x, P, {P}, op, "b1 (transform conv1 bias)");
  const Tensor LNW = small_acc(ln_w, x, P, {P}, op, "ln_w (LayerNorm weight)");
  const Tensor LNB = small_acc(ln_b, x, P, {P}, op, "ln_b (LayerNorm bias)");
  const Tensor W2 = small_acc(w2, x, C * P, cp, op, "w2 (transform conv2 weight)");
  const Tensor B2 = small_acc(b2, x, C, {C}, op, "b2 (transform conv2 bias)");
  auto [context, lse] = gc_context_op<Kernels>(x, mask_w, mask_b);  // [N, C], [N]
  Tensor h = at::addmm(B1, context, W1.t());                          // [N, P]
  auto [a, mean, rstd] = at::native_layer_norm(h, {P}, LNW, LNB, ln_eps);  // [N, P], [N, 1], [N, 1]
  a.relu_();                                                          // [N, P]
  const Tensor term = at::addmm(B2, a, W2.t());                       // [N, C]
  Tensor out = gc_add_op<Kernels>(x, term, residual, relu);          // [N, C, H, W]
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
  const int64_t C = x.size(1), P = transform_width(w1, op);
  const std::array<int64_t, 2> pc{P, C}, cp{C, P};
  // The add (and ReLU): the gradient of its input x (and the residual), and of T's output summed
  // over H*W.
  Tensor grad_in, grad_t;  // [N, C, H, W] x's dtype, [N, C] accumulation dtype
  if (relu) {
    TORCH_CHECK(out.has_value(), op, ": relu=True needs out (the forward's output)");
    std::tie(grad_in, grad_t) = gc_add_relu_backward_op<Kernels>(grad_out, *out);
  } else {
    TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have x's shape ", x.sizes(), ", got ",
                grad_out.sizes());
    grad_in = grad_out;
    grad_t = at::sum(grad_out, {2, 3}, false, acc_type(x.scalar_type()));
  }
  // T backwards, [N, C] -> [N, P] -> [N, C].
  const Tensor W1 = small_acc(w1, x, P * C, pc, op, "w1");
  const Tensor W2 = small_acc(w2, x, C * P, cp, op, "w2");
  const Tensor g_w2 = grad_t.t().mm(a);                                  // [C, P]
  const Tensor g_b2 = grad_t.sum(0);                                     // [C]
  const Tensor g_hn = at::threshold_backward(grad_t.mm(W2), a, 0);       // [N, P], through the ReLU
  auto [g_h, g_lnw, g_lnb] = at::native_layer_norm_backward(
      g_hn, h, {P}, mean, rstd, small_acc(ln_w, x, P, {P}, op, "ln_w"), small_acc(ln_b, x, P, {P}, op, "ln_b"),
      {true, true, true});                                               // [N, P], [P], [P]
  const Tensor g_w1 = g_h.t().mm(context);                               // [P, C]
  const Tensor g_b1 = g_h.sum(0);                                        // [P]
  const Tensor g_context = g_h.mm(W1);                                   // [N, C]
  // The context, with the add's gradient for x summed into grad_x in the same pass.
  auto [grad_x, g_mask_w] = gc_context_backward_op<Kernels>(g_context, c10::nullopt, x, mask_w, mask_b, context, lse,
                                                            grad_in);
  const auto like = [](const Tensor& g, const Tensor& p) { return g.to(p.scalar_type()).view(p.sizes()); };
  return {grad_x, g_mask_w, like(g_w1, w1), like(g_b1, b1), like(g_lnw, ln_w), like(g_lnb, ln_b), like(g_w2, w2),
          like(g_b2, b2), relu ? grad_in : at::empty({0}, x.options())};
}

}  // namespace gcrepro
