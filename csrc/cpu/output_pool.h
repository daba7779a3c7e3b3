// Large CPU outputs of the GC ops come from a pool of recycled, huge-page-backed blocks.
//
// Each op writes a fresh N*C*H*W output (or grad_x) in full, and on CPU the first touch of fresh
// memory costs more than the kernel's own pass: glibc serves large allocations with a fresh mmap
// (always above 32 MiB, its largest mmap threshold; below it, whenever it has just returned
// freed memory to the system), and every 4 KiB page then faults and is zeroed by the kernel. On
// the 2-core development VM a GC r16 block on a c5 tensor took 947 page faults per call, more
// time than its context pass; a new 62 MB c3 tensor filled at 3.8 GB/s against ~20 GB/s into
// mapped memory (benchmarks/RESULTS.md). Training allocates the same sizes every step, so the
// outputs of at least kPoolMinBytes are served from blocks freed earlier (best fit, at most
// 25% larger); a new block is a 2 MiB-aligned mapping of its own, advised MADV_HUGEPAGE (honoured
// when /sys/kernel/mm/transparent_hugepage/enabled is "always" or "madvise"), so even its first
// touch faults 512x less often. An output behaves as any CPU tensor (resize_ included). Freed
// blocks are kept up to a cap: GCREPRO_CPU_POOL_MB (read once; default 1024; 0 turns the pool
// off and outputs come from at::empty as any torch op's).
// Smaller outputs come from at::empty: glibc recycles those from memory already mapped.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace gcrepro {

constexpr int64_t kHugePageBytes = int64_t(2) << 20;
// Outputs at least this large come from the pool.
constexpr int64_t kPoolMinBytes = int64_t(1) << 20;

// empty_4d (../gc_ops.h) for a CPU output that the kernel writes in full (never read first).
at::Tensor empty_4d_cpu(const at::Tensor& like, bool nhwc);

struct OutputPoolStats {
  int64_t cap_bytes;      // GCREPRO_CPU_POOL_MB in bytes (0: pool off)
  int64_t cached_bytes;   // freed blocks kept for reuse
  int64_t cached_blocks;
  int64_t live_bytes;     // blocks held by tensors now
  int64_t hits;           // outputs served from a kept block
  int64_t misses;         // outputs that needed a new block
};

OutputPoolStats output_pool_stats();
// Frees every kept block (blocks held by tensors return to the pool when those are freed);
// returns the bytes freed.
int64_t output_pool_release();

}  // namespace gcrepro
