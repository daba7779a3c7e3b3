// Streaming (non-temporal) stores for outputs that cannot stay in the last-level cache.
//
// A normal store first reads the cache line it writes (read for ownership), so a pass that
// reads x and writes out moves 3 bytes over the memory bus per byte of out: for the c3/c4 tensors
// of a 2x800x1216 batch, whose pass is larger than the cache anyway, non-temporal stores cut that
// to 2 (measured on the development VM, 1 thread, x + t into an existing tensor: c4 2.2-2.4 ->
// 1.5-1.9 ms, c3 4.9 -> 3.7-4.3 ms). For a pass that fits in cache they are slower (c5 0.9-1.1 ->
// 1.25-1.4 ms, also with a residual input): the output would have stayed in cache. So a kernel
// streams only an output larger than half the last-level cache, which cannot stay there beside the
// input it is computed from (stream_stores(); on the development VM's 32 MiB L3: c3 and c4 stream,
// c5 does not).
// Streaming is written with fp32 vector intrinsics (stream_vec.h; the compiler does not emit
// non-temporal stores from `omp simd` loops), and only where it pays most: the fp32 add kernel
// (gc_add, the block's forward output). Other dtypes and the backward kernels store as usual.
// (Writing a piece of each row into an L1 buffer and copying it out with streaming stores, which
// would serve every dtype, measured no faster than plain stores.)
// GCREPRO_CPU_STREAM=always|never (read once) overrides the choice, to test or compare.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GCREPRO_HAVE_STREAM_STORES 1
#endif

namespace gcrepro {

// Bytes of the last-level cache of this machine (sysfs; else sysconf; else 32 MiB).
int64_t last_level_cache_bytes();

// Whether a kernel should write an output of `bytes` with streaming stores.
bool stream_stores(int64_t bytes);

// Orders this thread's streaming stores before its later stores (and the thread pool's join).
inline void stream_fence() {
#if defined(GCREPRO_HAVE_STREAM_STORES)
  _mm_sfence();
#endif
}

}  // namespace gcrepro
