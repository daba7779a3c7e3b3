// CPU kernels of the GC ops, registered with the dispatcher: each calls the ISA variant that
// cpu_isa() picked (isa.h). The kernels: context_kernels.h, add_kernels.h, transform_kernels.h.
#include "../gc_block.h"
#include "isa.h"

#include <torch/library.h>

namespace gcrepro {
namespace {

struct CpuKernels {
  static cpu::Tensor_pair context_forward(const Dense4d& d, const Tensor& w) {
    return cpu::cpu_isa() == cpu::Isa::avx2 ? cpu::avx2::context_forward(d, w) : cpu::baseline::context_forward(d, w);
  }
  static cpu::Tensor_pair context_backward(const Dense4d& d, const Tensor& w, const Tensor& g, const Tensor& gdot,
                                           const Tensor& lse, const Tensor& add) {
    return cpu::cpu_isa() == cpu::Isa::avx2 ? cpu::avx2::context_backward(d, w, g, gdot, lse, add)
                                            : cpu::baseline::context_backward(d, w, g, gdot, lse, add);
  }
  static Tensor add_forward(const Dense4d& d, const Tensor& t, const Tensor& res, bool relu) {
    return cpu::cpu_isa() == cpu::Isa::avx2 ? cpu::avx2::add_forward(d, t, res, relu)
                                            : cpu::baseline::add_forward(d, t, res, relu);
  }
  static cpu::Tensor_pair add_relu_backward(const Dense4d& d, const Tensor& grad) {
    return cpu::cpu_isa() == cpu::Isa::avx2 ? cpu::avx2::add_relu_backward(d, grad)
                                            : cpu::baseline::add_relu_backward(d, grad);
  }
  static cpu::Tensor_5 transform_forward(const Tensor& ctx, const Tensor& w1, const Tensor& b1, const Tensor& lnw,
                                         const Tensor& lnb, double eps, const Tensor& w2, const Tensor& b2) {
    return cpu::cpu_isa() == cpu::Isa::avx2 ? cpu::avx2::transform_forward(ctx, w1, b1, lnw, lnb, eps, w2, b2)
                                            : cpu::baseline::transform_forward(ctx, w1, b1, lnw, lnb, eps, w2, b2);
  }
  static cpu::Tensor_8 transform_backward(const Tensor& gt, const Tensor& ctx, const Tensor& h, const Tensor& mean,
                                          const Tensor& rstd, const Tensor& a, const Tensor& w1, const Tensor& lnw,
                                          const Tensor& lnb, const Tensor& w2) {
    return cpu::cpu_isa() == cpu::Isa::avx2
               ? cpu::avx2::transform_backward(gt, ctx, h, mean, rstd, a, w1, lnw, lnb, w2)
               : cpu::baseline::transform_backward(gt, ctx, h, mean, rstd, a, w1, lnw, lnb, w2);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(gcrepro, CPU, m) {
  m.impl("gc_context", &gc_context_op<CpuKernels>);
  m.impl("gc_context_backward", &gc_context_backward_op<CpuKernels>);
  m.impl("gc_add", &gc_add_op<CpuKernels>);
  m.impl("gc_add_relu_backward", &gc_add_relu_backward_op<CpuKernels>);
  m.impl("gc_block", &gc_block_op<CpuKernels>);
  m.impl("gc_block_backward", &gc_block_backward_op<CpuKernels>);
}

}  // namespace gcrepro
