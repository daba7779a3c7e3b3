// The CPU kernels are compiled twice, for two vector instruction sets, and picked at run time:
//   baseline  what the compiler targets by default (x86-64: SSE2), runs everywhere;
//   avx2      AVX2 + FMA + F16C (x86-64 CPUs since 2013-2015), faster on the compute-bound
//             context op (benchmarks/RESULTS.md).
// kernels_baseline.cpp and kernels_avx2.cpp include context_kernels.h and add_kernels.h inside
// namespace gcrepro::cpu::<isa>; gc_ops_cpu.cpp registers one CPU kernel per op that calls the
// variant cpu_isa() chose. GCREPRO_CPU_ISA=baseline (read once, at the first call) forces the
// baseline on a CPU that has AVX2, to test or compare it.
#pragma once

#include "../gc_ops.h"

#include <tuple>

namespace gcrepro::cpu {

using Tensor_pair = std::tuple<Tensor, Tensor>;
using Tensor_5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor_8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

enum class Isa { baseline, avx2 };

// The variant the kernels run: avx2 when built (x86-64, GCC or Clang) and the CPU has AVX2, FMA
// and F16C, unless GCREPRO_CPU_ISA=baseline.
Isa cpu_isa();
const char* cpu_isa_name();

#define GCREPRO_DECLARE_CPU_KERNELS(NS)                                                                  \
  namespace NS {                                                                                        \
  /* -> (context [N, C] in x's dtype, lse without bias [N]) */                                         \
  Tensor_pair context_forward(const Dense4d& d, const Tensor& w);                                       \
  /* -> (grad_x (+ add, when defined) in x's layout, grad_w [C]) */                                     \
  Tensor_pair context_backward(const Dense4d& d, const Tensor& w, const Tensor& g, const Tensor& gdot, \
                               const Tensor& lse, const Tensor& add);                                   \
  /* -> out = x + t (+ res) (ReLU) */                                                                    \
  Tensor add_forward(const Dense4d& d, const Tensor& t, const Tensor& res, bool relu);                  \
  /* -> (grad_in = grad * (out > 0), grad_t [N, C]) */                                                   \
  Tensor_pair add_relu_backward(const Dense4d& d, const Tensor& grad);                                  \
  /* the block's transform T (transform_kernels.h) -> (h, mean, rstd, a, term) */                        \
  Tensor_5 transform_forward(const Tensor& ctx, const Tensor& w1, const Tensor& b1, const Tensor& lnw,   \
                             const Tensor& lnb, double eps, const Tensor& w2, const Tensor& b2);         \
  /* -> (g_ctx, gdot, g_w1, g_b1, g_lnw, g_lnb, g_w2, g_b2) */                                             \
  Tensor_8 transform_backward(const Tensor& gt, const Tensor& ctx, const Tensor& h, const Tensor& mean,  \
                              const Tensor& rstd, const Tensor& a, const Tensor& w1, const Tensor& lnw,  \
                              const Tensor& lnb, const Tensor& w2);                                      \
  }

GCREPRO_DECLARE_CPU_KERNELS(baseline)
GCREPRO_DECLARE_CPU_KERNELS(avx2)

#undef GCREPRO_DECLARE_CPU_KERNELS

}  // namespace gcrepro::cpu
