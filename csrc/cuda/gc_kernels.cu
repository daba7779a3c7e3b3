// CUDA kernels of the GC ops (math and layouts: ../gc_ops.h; schemas: ../gc_ops.cpp).
// One .cu file on purpose: nvcc time dominates the build.
//
// gc_context: one block per (chunk of P positions, sample); P and the block size come from
// context_plan (launch_plan.h): 32 positions, fewer when that leaves the GPU short of blocks.
// Phase 1 computes the chunk's P logits (NCHW: lane = (channel group, position), warps and groups
// split the channels; channels_last: a warp per position, lanes split the channels, warp-shuffle
// reduction); phase 2 re-reads the same chunk of x (from L1/L2) for sum_j exp(logit_j - max)
// x[:, j], so x crosses DRAM once. Each block writes its chunk's (max, sum, weighted sum [C]); a
// small combine kernel merges the chunks of a sample (online softmax merge). The backward has the
// same structure and writes grad_x in the same pass.
// gc_add: rows of contiguous memory, 16-byte vector loads when sizes and alignment allow.
// H*W = 1: NCHW and channels_last are the same memory; gc_add and the ReLU backward index it as
// channels_last (rows of C), the context kernels run with P = 1 (32 channels per warp).
//
// All accumulation is fp32 (fp64 for fp64 inputs). Every sum has a fixed order (shuffle trees,
// shared-memory partials, no atomics): two runs on the same inputs give the same bits. No host
// synchronisation, workspaces come from the caching allocator (at::empty), kernels run on the
// current stream: the ops can be captured in a CUDA graph.
// tests/test_gc_kernel_emulation.py emulates these kernels' index formulas on the CPU: a change
// here goes there too.
#include <Python.h>

#include "../gc_block.h"
#include "../gc_ops.h"
#include "launch_plan.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
// (Not ATen/cuda/CUDAContext.h: it pulls in cuBLAS/cuSPARSE headers, which a minimal toolkit
// such as the nvcc-only one on the build machine does not ship.)
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

extern "C" {
// `import gcrepro._C_cuda` loads this library, which registers the CUDA kernels.
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace gcrepro {
namespace {

constexpr int kMaxWarps = 32;       // 1024 threads
constexpr int kCombineRows = 8;     // context_combine: 8 warps, each over every 8th chunk
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }
template <typename T>
__device__ __forceinline__ T dev_max(T a, T b) { return a > b ? a : b; }
template <typename T>
__device__ __forceinline__ T neg_inf() { return -std::numeric_limits<T>::infinity(); }
// m, or 0 where m is -inf: the reference point of exp(logit - m) when every logit is -inf
// (exp(-inf - (-inf)) would be NaN; with 0 the weights are 0, as the softmax has them).
template <typename T>
__device__ __forceinline__ T finite_or_zero(T m) { return m == neg_inf<T>() ? T(0) : m; }

// Sum over the lanes whose index differs from this lane's in the bits [from, to) (powers of two):
// (1, 32) the whole warp; (1, P) the P positions of a channel group; (P, 32) the groups of a position.
template <typename T>
__device__ __forceinline__ T lanes_sum(T v, int from, int to) {
  for (int o = from; o < to; o <<= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = dev_max(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Sum (kMax = false) or max over the block; every thread gets the result. All threads must call it.
template <bool kMax, typename T>
__device__ T block_reduce(T v, T* scratch /* kMaxWarps */) {
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[wid] = v;
  __syncthreads();
  T r = scratch[0];
  for (int i = 1; i < nw; ++i) r = kMax ? dev_max(r, scratch[i]) : r + scratch[i];
  return r;
}

// Attribute query: no synchronisation, allowed during CUDA graph capture.
int num_sms() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms;
}

// Warp 0 of a gc_context block: the chunk's softmax weights exp(logit - max) into p[lane] and
// the chunk's (max, sum of weights) into *pm, *ps. `valid` false for lanes past the chunk or H*W.
// A chunk whose logits are all -inf gets max -inf, weights 0 and sum 0 (finite_or_zero).
template <typename acc_t>
__device__ __forceinline__ void chunk_softmax(acc_t logit, bool valid, int lane, acc_t* p, acc_t* pm, acc_t* ps) {
  const acc_t l = valid ? logit : neg_inf<acc_t>();
  const acc_t cm = warp_max(l);
  const acc_t e = valid ? dev_exp(l - finite_or_zero(cm)) : acc_t(0);
  const acc_t s = warp_sum(e);
  p[lane] = e;
  if (lane == 0) {
    *pm = cm;
    *ps = s;
  }
}

// ---------------------------------------------------------------------------------------
// gc_context forward: per (chunk k, sample n) -> pm/ps [n*K + k], pa [(n*K + k) * C + c].
//
// NCHW lanes: lane = grp * P + q, q = position in the chunk, grp = channel group (32 / P groups).
// Thread (wid, grp) takes channels wid * G + grp + i * nw * G (G = 32 / P), i = 0, 1, ...

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxWarps * kWarp)
    context_partial_nchw(const scalar_t* __restrict__ x, const acc_t* __restrict__ w, int64_t C, int64_t HW, int P,
                         int K, acc_t* __restrict__ pm, acc_t* __restrict__ ps, acc_t* __restrict__ pa) {
  __shared__ acc_t part[kMaxWarps][kWarp];
  __shared__ acc_t p[kWarp];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int G = kWarp / P, q = lane % P, grp = lane / P;
  const int k = blockIdx.x;
  const int64_t n = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(k) * P;
  const bool valid = j0 + q < HW;
  const scalar_t* xj = x + n * C * HW + j0 + q;  // x[n, c, j0 + q] = xj[c * HW]
  const int64_t c_step = static_cast<int64_t>(nw) * G;

  acc_t l = 0;  // this thread's share of the logit of position j0 + q
  if (valid) {
#pragma unroll 8
    for (int64_t c = static_cast<int64_t>(wid) * G + grp; c < C; c += c_step) {
      l += w[c] * static_cast<acc_t>(xj[c * HW]);
    }
  }
  l = lanes_sum(l, P, kWarp);  // over the channel groups of the warp
  if (grp == 0) part[wid][q] = l;
  __syncthreads();
  if (wid == 0) {
    const bool mine = lane < P && j0 + lane < HW;
    acc_t lj = 0;
    if (lane < P) {
      for (int i = 0; i < nw; ++i) lj += part[i][lane];
    }
    chunk_softmax(lj, mine, lane, p, pm + n * K + k, ps + n * K + k);
  }
  __syncthreads();
  const acc_t pj = p[q];
  acc_t* pan = pa + (n * K + k) * C;
  for (int64_t c0 = static_cast<int64_t>(wid) * G; c0 < C; c0 += c_step) {  // (c0: the same in the whole warp)
    const int64_t c = c0 + grp;
    acc_t v = valid && c < C ? pj * static_cast<acc_t>(xj[c * HW]) : acc_t(0);  // second read: L1/L2 hit
    v = lanes_sum(v, 1, P);  // over the chunk's positions
    if (q == 0 && c < C) pan[c] = v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void context_partial_nhwc(const scalar_t* __restrict__ x, const acc_t* __restrict__ w, int64_t C,
                                     int64_t HW, int P, int K, acc_t* __restrict__ pm, acc_t* __restrict__ ps,
                                     acc_t* __restrict__ pa) {
  __shared__ acc_t p[kWarp];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int k = blockIdx.x;
  const int64_t n = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(k) * P;
  const int jn = static_cast<int>(HW - j0 < P ? HW - j0 : P);
  const scalar_t* xc = x + (n * HW + j0) * C;  // x[n, j0 + j, c] = xc[j * C + c]

  for (int j = wid; j < jn; j += nw) {
    const scalar_t* xr = xc + j * C;
    acc_t l = 0;
    for (int64_t c = lane; c < C; c += kWarp) l += w[c] * static_cast<acc_t>(xr[c]);
    l = warp_sum(l);
    if (lane == 0) p[j] = l;
  }
  __syncthreads();
  if (wid == 0) {
    chunk_softmax(lane < jn ? p[lane] : acc_t(0), lane < jn, lane, p, pm + n * K + k, ps + n * K + k);
  }
  __syncthreads();
  acc_t* pan = pa + (n * K + k) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t a = 0;
    for (int j = 0; j < jn; ++j) a += p[j] * static_cast<acc_t>(xc[j * C + c]);
    pan[c] = a;
  }
}

// Merge the K chunk partials of sample blockIdx.y for channels blockIdx.x * 32 + lane: warp r of
// the block's 8 sums chunks r, r + 8, ... of its lane's channel; the 8 sums are added in order.
template <typename acc_t>
__global__ void context_combine(const acc_t* __restrict__ pm, const acc_t* __restrict__ ps,
                                const acc_t* __restrict__ pa, int K, int64_t C, acc_t* __restrict__ out,
                                acc_t* __restrict__ lse) {
  __shared__ acc_t scratch[kMaxWarps];
  __shared__ acc_t rows[kCombineRows][kWarp];
  const int lane = threadIdx.x % kWarp, r = threadIdx.x / kWarp;
  const int64_t n = blockIdx.y;
  const acc_t* m = pm + n * K;
  const acc_t* s = ps + n * K;
  acc_t M = neg_inf<acc_t>();
  for (int k = threadIdx.x; k < K; k += blockDim.x) M = dev_max(M, m[k]);
  M = block_reduce<true>(M, scratch);
  const acc_t ref = finite_or_zero(M);  // every logit -inf: S = 0, context 0/0 = NaN, lse -inf
  acc_t S = 0;
  for (int k = threadIdx.x; k < K; k += blockDim.x) S += s[k] * dev_exp(m[k] - ref);
  S = block_reduce<false>(S, scratch);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + lane;
  acc_t v = 0;
  if (c < C) {
    for (int k = r; k < K; k += kCombineRows) v += dev_exp(m[k] - ref) * pa[(n * K + k) * C + c];
  }
  rows[r][lane] = v;
  __syncthreads();
  if (r == 0 && c < C) {
    acc_t sum = rows[0][lane];
    for (int i = 1; i < kCombineRows; ++i) sum += rows[i][lane];
    out[n * C + c] = sum / S;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) lse[n] = M + dev_log(S);
}

// ---------------------------------------------------------------------------------------
// gc_context backward: per (chunk k, sample n): grad_x of the chunk, pdw [(n*K + k) * C + c].
// Lanes and channels as in the forward.

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxWarps * kWarp)
    context_backward_nchw(const scalar_t* __restrict__ x, const acc_t* __restrict__ w, const acc_t* __restrict__ g,
                          const acc_t* __restrict__ gdot, const acc_t* __restrict__ lse, int64_t C, int64_t HW, int P,
                          int K, const scalar_t* __restrict__ ax, scalar_t* __restrict__ dx,
                          acc_t* __restrict__ pdw) {
  __shared__ acc_t part_l[kMaxWarps][kWarp];
  __shared__ acc_t part_s[kMaxWarps][kWarp];
  __shared__ acc_t pp[kWarp];
  __shared__ acc_t pd[kWarp];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int G = kWarp / P, q = lane % P, grp = lane / P;
  const int k = blockIdx.x;
  const int64_t n = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(k) * P;
  const bool valid = j0 + q < HW;
  const int64_t base = n * C * HW + j0 + q;  // element (n, c, j0 + q) at base + c * HW
  const acc_t* gn = g + n * C;
  const int64_t c_step = static_cast<int64_t>(nw) * G;

  acc_t l = 0, s = 0;
  if (valid) {
#pragma unroll 4
    for (int64_t c = static_cast<int64_t>(wid) * G + grp; c < C; c += c_step) {
      const acc_t v = static_cast<acc_t>(x[base + c * HW]);
      l += w[c] * v;
      s += gn[c] * v;
    }
  }
  l = lanes_sum(l, P, kWarp);
  s = lanes_sum(s, P, kWarp);
  if (grp == 0) {
    part_l[wid][q] = l;
    part_s[wid][q] = s;
  }
  __syncthreads();
  if (wid == 0 && lane < P) {
    acc_t lj = 0, sj = 0;
    for (int i = 0; i < nw; ++i) {
      lj += part_l[i][lane];
      sj += part_s[i][lane];
    }
    const acc_t pj = j0 + lane < HW ? dev_exp(lj - lse[n]) : acc_t(0);
    pp[lane] = pj;
    pd[lane] = pj * (sj - gdot[n]);  // dL/dlogit_j
  }
  __syncthreads();
  const acc_t pj = pp[q], dl = pd[q];
  acc_t* pdwn = pdw + (n * K + k) * C;
  for (int64_t c0 = static_cast<int64_t>(wid) * G; c0 < C; c0 += c_step) {  // (c0: the same in the whole warp)
    const int64_t c = c0 + grp;
    acc_t v = 0;
    if (valid && c < C) {
      const int64_t i = base + c * HW;
      acc_t gx = pj * gn[c] + w[c] * dl;
      if (ax != nullptr) gx += static_cast<acc_t>(ax[i]);  // the gradient x gets from elsewhere
      dx[i] = static_cast<scalar_t>(gx);
      v = dl * static_cast<acc_t>(x[i]);
    }
    v = lanes_sum(v, 1, P);
    if (q == 0 && c < C) pdwn[c] = v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void context_backward_nhwc(const scalar_t* __restrict__ x, const acc_t* __restrict__ w,
                                      const acc_t* __restrict__ g, const acc_t* __restrict__ gdot,
                                      const acc_t* __restrict__ lse, int64_t C, int64_t HW, int P, int K,
                                      const scalar_t* __restrict__ ax, scalar_t* __restrict__ dx,
                                      acc_t* __restrict__ pdw) {
  __shared__ acc_t pp[kWarp];
  __shared__ acc_t pd[kWarp];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int k = blockIdx.x;
  const int64_t n = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(k) * P;
  const int jn = static_cast<int>(HW - j0 < P ? HW - j0 : P);
  const int64_t base = (n * HW + j0) * C;  // element (n, j0 + j, c) at base + j * C + c
  const acc_t* gn = g + n * C;

  for (int j = wid; j < jn; j += nw) {
    const scalar_t* xr = x + base + j * C;
    acc_t l = 0, s = 0;
    for (int64_t c = lane; c < C; c += kWarp) {
      const acc_t v = static_cast<acc_t>(xr[c]);
      l += w[c] * v;
      s += gn[c] * v;
    }
    l = warp_sum(l);
    s = warp_sum(s);
    if (lane == 0) {
      const acc_t pj = dev_exp(l - lse[n]);
      pp[j] = pj;
      pd[j] = pj * (s - gdot[n]);
    }
  }
  __syncthreads();
  acc_t* pdwn = pdw + (n * K + k) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const acc_t gc = gn[c], wc = w[c];
    acc_t a = 0;
    for (int j = 0; j < jn; ++j) {
      const int64_t i = base + j * C + c;
      acc_t gx = pp[j] * gc + wc * pd[j];
      if (ax != nullptr) gx += static_cast<acc_t>(ax[i]);  // the gradient x gets from elsewhere
      dx[i] = static_cast<scalar_t>(gx);
      a += pd[j] * static_cast<acc_t>(x[i]);
    }
    pdwn[c] = a;
  }
}

ContextPlan plan_for(const Dense4d& d, const char* op) {
  TORCH_CHECK(d.N <= kMaxGridY, op, " (CUDA): batch size ", d.N, " exceeds ", kMaxGridY,
              " (gridDim.y; gcrepro.ops.use_fused sends such batches to the reference)");
  const ContextPlan plan = context_plan(d.N, d.HW, d.nhwc, num_sms());
  TORCH_CHECK(plan.chunks <= std::numeric_limits<int>::max(), op, " (CUDA): H*W = ", d.HW, " is too large");
  return plan;
}

struct CudaContextKernels {
  static std::tuple<Tensor, Tensor> context_forward(const Dense4d& d, const Tensor& w) {
    const c10::cuda::CUDAGuard guard(d.t.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t N = d.N, C = d.C, HW = d.HW;
    const ContextPlan plan = plan_for(d, "gcrepro::gc_context");
    const int P = plan.positions, K = static_cast<int>(plan.chunks);
    const auto acc_opts = d.t.options().dtype(w.scalar_type());
    Tensor pm = at::empty({N, K}, acc_opts);
    Tensor ps = at::empty({N, K}, acc_opts);
    Tensor pa = at::empty({N, K, C}, acc_opts);
    Tensor context = at::empty({N, C}, acc_opts);
    Tensor lse = at::empty({N}, acc_opts);
    const dim3 grid(K, N);
    const dim3 combine_grid((C + kWarp - 1) / kWarp, N);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_context_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = d.t.const_data_ptr<scalar_t>();
      const acc_t* wp = w.const_data_ptr<acc_t>();
      if (d.nhwc) {
        context_partial_nhwc<scalar_t, acc_t><<<grid, plan.threads, 0, stream>>>(
            x, wp, C, HW, P, K, pm.mutable_data_ptr<acc_t>(), ps.mutable_data_ptr<acc_t>(),
            pa.mutable_data_ptr<acc_t>());
      } else {
        context_partial_nchw<scalar_t, acc_t><<<grid, plan.threads, 0, stream>>>(
            x, wp, C, HW, P, K, pm.mutable_data_ptr<acc_t>(), ps.mutable_data_ptr<acc_t>(),
            pa.mutable_data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      context_combine<acc_t><<<combine_grid, kCombineRows * kWarp, 0, stream>>>(
          pm.const_data_ptr<acc_t>(), ps.const_data_ptr<acc_t>(), pa.const_data_ptr<acc_t>(), K, C,
          context.mutable_data_ptr<acc_t>(), lse.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {context, lse};
  }

  static std::tuple<Tensor, Tensor> context_backward(const Dense4d& d, const Tensor& w, const Tensor& g,
                                                     const Tensor& gdot, const Tensor& lse, const Tensor& add) {
    const c10::cuda::CUDAGuard guard(d.t.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t N = d.N, C = d.C, HW = d.HW;
    const ContextPlan plan = plan_for(d, "gcrepro::gc_context_backward");
    const int P = plan.positions, K = static_cast<int>(plan.chunks);
    Tensor grad_x = empty_4d(d.t, d.nhwc);
    Tensor pdw = at::empty({N * K, C}, w.options());
    const dim3 grid(K, N);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_context_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = d.t.const_data_ptr<scalar_t>();
      scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
      const scalar_t* ax = add.defined() ? add.const_data_ptr<scalar_t>() : nullptr;
      if (d.nhwc) {
        context_backward_nhwc<scalar_t, acc_t><<<grid, plan.threads, 0, stream>>>(
            x, w.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>(), gdot.const_data_ptr<acc_t>(),
            lse.const_data_ptr<acc_t>(), C, HW, P, K, ax, dx, pdw.mutable_data_ptr<acc_t>());
      } else {
        context_backward_nchw<scalar_t, acc_t><<<grid, plan.threads, 0, stream>>>(
            x, w.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>(), gdot.const_data_ptr<acc_t>(),
            lse.const_data_ptr<acc_t>(), C, HW, P, K, ax, dx, pdw.mutable_data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {grad_x, pdw.sum(0)};
  }
};

// ---------------------------------------------------------------------------------------
// gc_add: a block walks rows of `len` contiguous elements (grid-stride over rows). NCHW: row
// (n, c) with one term value; channels_last: row (n, position) with term row n.

// Rows of C contiguous values: channels_last, and H*W = 1 in either layout (the same memory; as
// NCHW rows of one value it would use one lane of each warp).
bool rows_of_channels(const Dense4d& d) { return d.nhwc || d.HW == 1; }

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename scalar_t, typename acc_t, int V, bool kRes, bool kRelu>
__global__ void add_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r, const acc_t* __restrict__ t,
                         scalar_t* __restrict__ out, int64_t rows, int64_t len, int64_t HW, bool nhwc) {
  using P = Pack<scalar_t, V>;
  const int64_t packs = len / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * len;
    const acc_t* trow = nhwc ? t + (row / HW) * len : t + row;
    const acc_t t0 = nhwc ? acc_t(0) : trow[0];
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      const P xv = reinterpret_cast<const P*>(x + off)[i];
      P rv;
      if constexpr (kRes) rv = reinterpret_cast<const P*>(r + off)[i];
      P ov;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        acc_t v = static_cast<acc_t>(xv.v[e]) + (nhwc ? trow[i * V + e] : t0);
        if constexpr (kRes) v += static_cast<acc_t>(rv.v[e]);
        if constexpr (kRelu) v = v < acc_t(0) ? acc_t(0) : v;  // keeps NaN, like torch.relu
        ov.v[e] = static_cast<scalar_t>(v);
      }
      reinterpret_cast<P*>(out + off)[i] = ov;
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// gc_add_relu_backward, NCHW: one block per row (n, c): mask, store, block sum.
template <typename scalar_t, typename acc_t, int V>
__global__ void relu_backward_rows(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y,
                                   scalar_t* __restrict__ gi, acc_t* __restrict__ gt, int64_t len) {
  using P = Pack<scalar_t, V>;
  __shared__ acc_t scratch[kMaxWarps];
  const int64_t row = blockIdx.x;
  const int64_t off = row * len;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < len / V; i += blockDim.x) {
    const P gv = reinterpret_cast<const P*>(g + off)[i];
    const P yv = reinterpret_cast<const P*>(y + off)[i];
    P ov;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      ov.v[e] = static_cast<acc_t>(yv.v[e]) > acc_t(0) ? gv.v[e] : scalar_t(0);
      sum += static_cast<acc_t>(ov.v[e]);
    }
    reinterpret_cast<P*>(gi + off)[i] = ov;
  }
  sum = block_reduce<false>(sum, scratch);
  if (threadIdx.x == 0) gt[row] = sum;
}

// gc_add_relu_backward, channels_last: block (32 channels, 8 position lanes) over one range of
// positions of sample blockIdx.y; partial sums per range: part [S, N, C] (summed on the host).
template <typename scalar_t, typename acc_t>
__global__ void relu_backward_nhwc(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y,
                                   scalar_t* __restrict__ gi, acc_t* __restrict__ part, int64_t C, int64_t HW,
                                   int64_t per) {
  __shared__ acc_t red[8][kWarp];
  const int64_t n = blockIdx.y, split = blockIdx.z;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t jb = split * per;
  const int64_t je = jb + per < HW ? jb + per : HW;
  acc_t sum = 0;
  if (c < C) {
    for (int64_t j = jb + threadIdx.y; j < je; j += blockDim.y) {
      const int64_t i = (n * HW + j) * C + c;
      const scalar_t v = static_cast<acc_t>(y[i]) > acc_t(0) ? g[i] : scalar_t(0);
      gi[i] = v;
      sum += static_cast<acc_t>(v);
    }
  }
  red[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < static_cast<int>(blockDim.y); ++i) sum += red[i][threadIdx.x];
    part[(split * gridDim.y + n) * C + c] = sum;
  }
}

template <typename scalar_t, int V, bool kRes, bool kRelu>
void launch_add(const Dense4d& d, const Tensor& t, const Tensor& res, Tensor& out, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool cl = rows_of_channels(d);
  const int64_t rows = cl ? d.N * d.HW : d.N * d.C;
  const int64_t len = cl ? d.C : d.HW;
  const int64_t packs = len / V;
  const int threads = static_cast<int>(std::min<int64_t>(256, (packs + kWarp - 1) / kWarp * kWarp));
  const int64_t blocks = std::min<int64_t>(rows, static_cast<int64_t>(num_sms()) * 32);
  add_rows<scalar_t, acc_t, V, kRes, kRelu><<<blocks, threads, 0, stream>>>(
      d.t.const_data_ptr<scalar_t>(), kRes ? res.const_data_ptr<scalar_t>() : nullptr, t.const_data_ptr<acc_t>(),
      out.mutable_data_ptr<scalar_t>(), rows, len, d.HW, cl);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kRes, bool kRelu>
void dispatch_add_vec(const Dense4d& d, const Tensor& t, const Tensor& res, Tensor& out, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(scalar_t);
  const int64_t len = rows_of_channels(d) ? d.C : d.HW;
  const bool vec = len % V == 0 && aligned16(d.t.const_data_ptr()) && aligned16(out.const_data_ptr()) &&
                   (!kRes || aligned16(res.const_data_ptr()));
  if (vec) launch_add<scalar_t, V, kRes, kRelu>(d, t, res, out, stream);
  else launch_add<scalar_t, 1, kRes, kRelu>(d, t, res, out, stream);
}

struct CudaAddKernels {
  static Tensor add_forward(const Dense4d& d, const Tensor& t, const Tensor& res, bool relu) {
    const c10::cuda::CUDAGuard guard(d.t.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    Tensor out = empty_4d(d.t, d.nhwc);
    const bool has_res = res.defined();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_add_cuda", [&] {
      if (has_res && relu) dispatch_add_vec<scalar_t, true, true>(d, t, res, out, stream);
      else if (has_res) dispatch_add_vec<scalar_t, true, false>(d, t, res, out, stream);
      else if (relu) dispatch_add_vec<scalar_t, false, true>(d, t, res, out, stream);
      else dispatch_add_vec<scalar_t, false, false>(d, t, res, out, stream);
    });
    return out;
  }

  static std::tuple<Tensor, Tensor> add_relu_backward(const Dense4d& d, const Tensor& grad) {
    const c10::cuda::CUDAGuard guard(d.t.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t N = d.N, C = d.C, HW = d.HW;
    Tensor grad_in = empty_4d(d.t, d.nhwc);
    const auto acc_opts = d.t.options().dtype(acc_type(d.t.scalar_type()));
    Tensor grad_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_add_relu_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      const scalar_t* y = d.t.const_data_ptr<scalar_t>();
      scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
      if (!rows_of_channels(d)) {
        // One block per row (n, c): N * C must fit gridDim.x (2^31 - 1); the launch below would
        // otherwise silently truncate it to 32 bits and leave rows unwritten.
        TORCH_CHECK(N * C <= std::numeric_limits<int>::max(), "gcrepro gc_add_relu_backward (CUDA): N*C = ", N * C,
                    " exceeds 2^31 - 1");
        grad_t = at::empty({N, C}, acc_opts);
        constexpr int V = 16 / sizeof(scalar_t);
        const bool vec = HW % V == 0 && aligned16(g) && aligned16(y) && aligned16(gi);
        const int threads = static_cast<int>(std::min<int64_t>(256, ((vec ? HW / V : HW) + kWarp - 1) / kWarp * kWarp));
        if (vec) {
          relu_backward_rows<scalar_t, acc_t, V><<<N * C, threads, 0, stream>>>(g, y, gi, grad_t.mutable_data_ptr<acc_t>(), HW);
        } else {
          relu_backward_rows<scalar_t, acc_t, 1><<<N * C, threads, 0, stream>>>(g, y, gi, grad_t.mutable_data_ptr<acc_t>(), HW);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        TORCH_CHECK(N <= kMaxGridY, "gcrepro::gc_add_relu_backward (CUDA): batch size ", N, " exceeds ", kMaxGridY,
                    " (gridDim.y; gcrepro.ops.use_fused sends such batches to the reference)");
        const int64_t cblocks = (C + kWarp - 1) / kWarp;
        const int64_t want = (4 * num_sms() + cblocks * N - 1) / (cblocks * N);
        const int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, (HW + 7) / 8, 65535}));
        const int64_t per = (HW + splits - 1) / splits;
        Tensor part = at::empty({splits, N, C}, acc_opts);
        relu_backward_nhwc<scalar_t, acc_t><<<dim3(cblocks, N, splits), dim3(kWarp, 8), 0, stream>>>(
            g, y, gi, part.mutable_data_ptr<acc_t>(), C, HW, per);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_t = part.sum(0);
      }
    });
    return {grad_in, grad_t};
  }
};

}  // namespace

// The whole block (../gc_block.h) runs both, and its transform with ATen ops.
struct CudaKernels : CudaContextKernels, CudaAddKernels, AtenTransform {};

TORCH_LIBRARY_IMPL(gcrepro, CUDA, m) {
  m.impl("gc_context", &gc_context_op<CudaContextKernels>);
  m.impl("gc_context_backward", &gc_context_backward_op<CudaContextKernels>);
  m.impl("gc_add", &gc_add_op<CudaAddKernels>);
  m.impl("gc_add_relu_backward", &gc_add_relu_backward_op<CudaAddKernels>);
  m.impl("gc_block", &gc_block_op<CudaKernels>);
  m.impl("gc_block_backward", &gc_block_backward_op<CudaKernels>);
}

}  // namespace gcrepro
