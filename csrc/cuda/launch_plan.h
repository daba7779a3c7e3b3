// How the CUDA gc_context kernels (forward and backward, gc_kernels.cu) split their work: host-side
// C++ without CUDA, so that the CPU library exposes the same function as
// torch.ops.gcrepro.cuda_context_plan and the CPU tests check the split the GPU would run
// (tests/test_gc_kernel_emulation.py emulates the kernels' index formulas on it).
//
// A block takes P consecutive positions ("a chunk") of one sample; a sample has K = ceil(HW / P)
// chunks, the grid is (K, N). P is 32 (a lane per position) unless that leaves the GPU short of
// blocks: small H*W (c5) with a small batch gave 60 blocks for 132 SMs. P then halves, down to
// 8, until there are at least kBlocksPerSm blocks per SM. H*W below 32 also lowers P, to the
// power of two that holds H*W, so that H*W = 1 does not leave 31 lanes of every warp idle.
// NCHW: the P positions of a channel row are contiguous, P * 32 / P = 32 lanes read 32 / P rows
// at once. channels_last: a warp reads a position's C contiguous values whatever P is.
#pragma once

#include <cstdint>

namespace gcrepro {

constexpr int kWarp = 32;
constexpr int kMinPositions = 8;   // 8 positions = 32 bytes of an fp32 row: one DRAM sector
constexpr int kBlocksPerSm = 2;    // the grid fills the GPU at this many blocks per SM
constexpr int kMaxGridY = 65535;   // gridDim.y limit: the batch size the kernels take

struct ContextPlan {
  int positions;   // P: positions per block, a power of two <= 32
  int64_t chunks;  // K = ceil(HW / P): blocks per sample
  int threads;     // threads per block
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline ContextPlan context_plan(int64_t N, int64_t HW, bool nhwc, int64_t sms) {
  int p = kWarp;
  while (p > 1 && p / 2 >= HW) p /= 2;  // the smallest power of two >= HW, at most 32
  while (p > kMinPositions && N * ceil_div(HW, p) < kBlocksPerSm * sms) p /= 2;
  const int64_t K = ceil_div(HW, p);
  // NCHW: 32 warps while blocks are few (each SM then keeps enough loads in flight), else 8.
  // channels_last: 8 warps (a warp per position in the logit sweep; P <= 32 positions).
  const int threads = nhwc || N * K >= 4 * sms ? 256 : 1024;
  return {p, K, threads};
}

}  // namespace gcrepro
