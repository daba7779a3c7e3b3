// The CPU kernels compiled for AVX2 + FMA + F16C (run only where cpu_isa() finds them). The
// target is switched after every header is included (kernels_includes.h), so only the
// functions defined below get the wider instructions; inline functions from torch's headers
// that the compiler inlines into them are compiled with them too, which is safe.
#include "kernels_includes.h"

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define GCREPRO_AVX2_BUILT 1
#elif defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GCREPRO_AVX2_BUILT 1
#endif

namespace gcrepro::cpu::avx2 {
#include "context_kernels.h"
#include "add_kernels.h"
#include "transform_kernels.h"
}  // namespace gcrepro::cpu::avx2

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute pop
#elif defined(__x86_64__) && defined(__GNUC__)
#pragma GCC pop_options
#endif

namespace gcrepro::cpu {

Isa cpu_isa() {
  static const Isa isa = [] {
    const char* env = std::getenv("GCREPRO_CPU_ISA");
    if (env != nullptr && std::string(env) == "baseline") return Isa::baseline;
#if defined(GCREPRO_AVX2_BUILT)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      return Isa::avx2;
    }
#endif
    return Isa::baseline;
  }();
  return isa;
}

const char* cpu_isa_name() { return cpu_isa() == Isa::avx2 ? "avx2" : "baseline"; }

}  // namespace gcrepro::cpu
