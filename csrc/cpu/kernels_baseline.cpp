// The CPU kernels for the compiler's default ISA (x86-64: SSE2): the variant every CPU runs.
#include "kernels_includes.h"

namespace gcrepro::cpu::baseline {
#include "context_kernels.h"
#include "add_kernels.h"
#include "transform_kernels.h"
}  // namespace gcrepro::cpu::baseline
