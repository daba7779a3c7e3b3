// Large CPU outputs backed by transparent huge pages.
//
// A fresh N*C*H*W output is written once, so its cost includes the first touch of every page.
// glibc serves allocations above its mmap threshold (at most 32 MiB on 64-bit) with a fresh
// mmap on every call, so such an output page-faults 4 KiB at a time each call: on the 2-core
// development VM a new 62 MB c3 tensor filled at 3.8 GB/s, about 3x slower than writing the same
// bytes into memory already mapped. Asking the kernel for 2 MiB pages (madvise MADV_HUGEPAGE,
// honoured when /sys/kernel/mm/transparent_hugepage/enabled is "always" or "madvise") cuts the
// faults 512-fold. torch's own CPU allocator does the same for every allocation only when
// THP_MEM_ALLOC_ENABLE=1 is set; the ops here do it for their large outputs without it.
// Smaller outputs are recycled by glibc from memory that is already mapped: left alone.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gcrepro {

constexpr int64_t kHugePageBytes = int64_t(2) << 20;
// Outputs at least this large get the advice (glibc's largest mmap threshold, see above).
constexpr int64_t kHugeOutputBytes = int64_t(32) << 20;

// Advise huge pages for the 2 MiB-aligned interior of t's (not yet touched) memory. Advice only:
// a kernel without THP, or a failed call, leaves the tensor as it was.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = static_cast<int64_t>(t.nbytes());
  if (!t.is_cpu() || bytes < kHugeOutputBytes) return;
  const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHugePageBytes - 1) & ~uintptr_t(kHugePageBytes - 1);
  const uintptr_t end = (p + bytes) & ~uintptr_t(kHugePageBytes - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// empty_4d (../gc_ops.h) for a CPU output that each kernel writes in full.
inline at::Tensor empty_4d_cpu(const at::Tensor& like, bool nhwc) {
  at::Tensor out = empty_4d(like, nhwc);
  advise_huge_pages(out);
  return out;
}

}  // namespace gcrepro
