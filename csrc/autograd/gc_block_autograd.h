// The autograd kernel of gcrepro::gc_block (registered for the Autograd key in gc_ops.cpp): a
// C++ autograd function whose forward is the op below autograd and whose backward is
// gcrepro::gc_block_backward, so that a training step runs no Python per GC block. Both are
// called through the dispatcher: torch.compile traces them through their fake kernels
// (gcrepro/ops/fused.py, block.py).
//
// Without gradients (grad mode off, or no input requiring grad) the op runs directly: no autograd
// node, nothing saved. Forward-mode AD (dual tensors, torch.func.jvp) is refused: there is no
// jvp formula, and running without one would return out without its tangent.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <tuple>

namespace gcrepro::autograd {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using BlockOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using BlockGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

inline const c10::TypedOperatorHandle<BlockOutputs(const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                                                   const Tensor&, const Tensor&, const Tensor&, double, const Tensor&,
                                                   const Tensor&, const OptTensor&, bool)>&
block_op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("gcrepro::gc_block", "")
                                 .typed<BlockOutputs(const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                                                     const Tensor&, const Tensor&, const Tensor&, double,
                                                     const Tensor&, const Tensor&, const OptTensor&, bool)>();
  return handle;
}

inline const c10::TypedOperatorHandle<BlockGrads(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const OptTensor&, bool)>&
block_backward_op() {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gcrepro::gc_block_backward", "")
          .typed<BlockGrads(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                            const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                            const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                            const OptTensor&, bool)>();
  return handle;
}

inline OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

class GcBlockFunction : public torch::autograd::Function<GcBlockFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const Tensor& mask_w, const OptTensor& mask_b, const Tensor& w1,
                                                const Tensor& b1, const Tensor& ln_w, const Tensor& ln_b,
                                                double ln_eps, const Tensor& w2, const Tensor& b2,
                                                const OptTensor& residual, bool relu) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, context, lse, h, mean, rstd, a] =
        block_op().call(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu);
    ctx->mark_non_differentiable({context, lse, h, mean, rstd, a});
    ctx->set_materialize_grads(false);  // (no zero tensors for the non-differentiable outputs)
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["residual"] = residual.has_value();
    ctx->save_for_backward({x, mask_w, mask_b.value_or(Tensor()), w1, b1, ln_w, ln_b, w2, b2, context, lse, h, mean,
                            rstd, a, relu ? out : Tensor()});
    return {out, context, lse, h, mean, rstd, a};
  }

  // One gradient per forward argument (12); undefined for the non-tensor ones and absent tensors.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const Tensor& grad_out = grads[0];
    if (!grad_out.defined()) {  // out got no gradient: nothing to propagate
      return torch::autograd::variable_list(12);
    }
    const bool relu = ctx->saved_data["relu"].toBool();
    const bool residual = ctx->saved_data["residual"].toBool();
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &mask_w = s[1], &mask_b = s[2], &w1 = s[3], &b1 = s[4], &ln_w = s[5], &ln_b = s[6];
    const Tensor &w2 = s[7], &b2 = s[8];
    auto [grad_x, g_mask_w, g_w1, g_b1, g_lnw, g_lnb, g_w2, g_b2, grad_in] = block_backward_op().call(
        grad_out, x, mask_w, opt(mask_b), w1, b1, ln_w, ln_b, w2, b2, s[9], s[10], s[11], s[12], s[13], s[14],
        opt(s[15]), relu);
    const Tensor g_mask_b = mask_b.defined() ? at::zeros_like(mask_b) : Tensor();  // the softmax cancels the bias
    const Tensor g_residual = residual ? (relu ? grad_in : grad_out) : Tensor();
    return {grad_x, g_mask_w, g_mask_b, g_w1, g_b1, g_lnw, g_lnb, Tensor(), g_w2, g_b2, g_residual, Tensor()};
  }
};

inline BlockOutputs gc_block_autograd(const Tensor& x, const Tensor& mask_w, const OptTensor& mask_b, const Tensor& w1,
                                      const Tensor& b1, const Tensor& ln_w, const Tensor& ln_b, double ln_eps,
                                      const Tensor& w2, const Tensor& b2, const OptTensor& residual, bool relu) {
  using torch::autograd::isFwGradDefined;
  const bool dual = isFwGradDefined(x) || isFwGradDefined(mask_w) || isFwGradDefined(mask_b) || isFwGradDefined(w1) ||
                    isFwGradDefined(b1) || isFwGradDefined(ln_w) || isFwGradDefined(ln_b) || isFwGradDefined(w2) ||
                    isFwGradDefined(b2) || isFwGradDefined(residual);
  TORCH_CHECK_NOT_IMPLEMENTED(!dual,
                              "gcrepro::gc_block has no forward-mode AD (jvp) formula: it cannot run inside "
                              "torch.autograd.forward_ad.dual_level or torch.func.jvp / jacfwd / hessian; use the "
                              "reference GC block there (ContextBlock(impl='reference'))");
  const auto needs_grad = [](const Tensor& t) { return t.requires_grad(); };
  const bool grad = at::GradMode::is_enabled() &&
                    (needs_grad(x) || needs_grad(mask_w) || (mask_b.has_value() && needs_grad(*mask_b)) ||
                     needs_grad(w1) || needs_grad(b1) || needs_grad(ln_w) || needs_grad(ln_b) || needs_grad(w2) ||
                     needs_grad(b2) || (residual.has_value() && needs_grad(*residual)));
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return block_op().call(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu);
  }
  const auto o = GcBlockFunction::apply(x, mask_w, mask_b, w1, b1, ln_w, ln_b, ln_eps, w2, b2, residual, relu);
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6]};
}

}  // namespace gcrepro::autograd
