// Host-side glue shared by the CPU and CUDA kernels of the GC ops (schemas: gc_ops.cpp).
//
// Every op body below is device-generic: it validates the inputs, picks the memory layout,
// converts the small [C] / [N, C] operands to the accumulation type and calls the device's
// `Kernels` struct (cpu/gc_ops_cpu.cpp, cuda/gc_kernels.cu), which only sees raw,
// dense tensors. The bias of conv_mask never reaches a kernel: it shifts every logit of a
// sample equally, so the softmax ignores it; it is added to the returned log-sum-exp only.
#pragma once

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <array>
#include <cstdint>
#include <tuple>

namespace gcrepro {

using at::Tensor;

// Accumulation type: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs.
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// x viewed as a dense [N, C, HW] (NCHW) or [N, HW, C] (NHWC, channels_last) array.
struct Dense4d {
  Tensor t;      // dense in the layout below (the input itself unless it was not dense)
  bool nhwc;     // true: channels_last memory, channel index fastest
  int64_t N, C, HW;
};

// Kernels support contiguous NCHW and channels_last natively. Any other stride pattern
// (a slice, a permutation other than channels_last) is copied to contiguous NCHW first:
// that copy is one extra read+write of x, only for such unusual inputs.
inline Dense4d as_dense(const Tensor& x) {
  Dense4d d;
  d.N = x.size(0);
  d.C = x.size(1);
  d.HW = x.size(2) * x.size(3);
  if (x.is_contiguous()) {
    d.t = x;
    d.nhwc = false;
  } else if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    d.t = x;
    d.nhwc = true;
  } else {
    d.t = x.contiguous();  // documented copy: non-dense input
    d.nhwc = false;
  }
  return d;
}

// A second [N, C, H, W] operand (residual, incoming gradient) in the layout of `like`.
// A mismatched layout costs one copy of that operand (the kernels index both the same way).
inline Tensor in_layout(const Tensor& t, bool nhwc) {
  return nhwc ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

// CPU outputs of at least this many bytes ask for transparent huge pages (below): glibc's largest mmap
// threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX). Above it every allocation is a fresh mmap whose pages
// all fault on first touch; below it glibc raises its threshold as large blocks are freed and hands the
// same, already faulted-in heap memory back, where the advice measured slower (c4 31 MB, c5 15 MB).
constexpr size_t kHugePageOutputBytes = size_t(32) << 20;

// A fresh large CPU output otherwise takes a page fault per 4 KiB on its first write: at the paper's c3
// shape (62 MB) that was most of the block's forward (benchmarks/RESULTS.md, 2026-11-30). Advising the
// 2 MiB-aligned interior of the buffer as MADV_HUGEPAGE (where THP is "madvise", as on most
// distributions) lets the kernel back it with huge pages instead: one fault per 2 MiB. Advice only:
// nothing changes where THP is off.
inline void advise_huge_pages(const Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = t.nbytes();
  if (!t.is_cpu() || bytes < kHugePageOutputBytes) {
    return;
  }
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // (a failure only loses the advice)
  }
#else
  (void)t;
#endif
}

// An empty [N, C, H, W] tensor with the dense layout the kernels write.
inline Tensor empty_4d(const Tensor& like, bool nhwc) {
  Tensor out = at::empty(like.sizes(), like.options().memory_format(
                                           nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  advise_huge_pages(out);
  return out;
}

// The dtypes every kernel is compiled for (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)). Not
// at::isFloatingType: that also admits the float8 types, which the dispatch would then reject
// with a message naming the kernel instead of the input.
inline bool kernel_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

inline void check_x(const Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(kernel_dtype(x.scalar_type()), op, ": x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(1) >= 1 && x.size(2) * x.size(3) >= 1, op,
              ": x needs C >= 1 and H*W >= 1, got shape ", x.sizes());
}

// A small operand with `numel` elements (w: [1, C, 1, 1] -> [C]; term: [N, C, 1, 1] -> [N, C])
// as a contiguous tensor of the accumulation type on x's device.
inline void check_small(const Tensor& v, const Tensor& x, int64_t numel, at::IntArrayRef shape, const char* op,
                        const char* name) {
  TORCH_CHECK(v.numel() == numel, op, ": ", name, " must have ", numel, " elements (shape ", shape,
              "), got shape ", v.sizes());
  TORCH_CHECK(v.device() == x.device(), op, ": ", name, " is on ", v.device(), " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(v.scalar_type()), op, ": ", name, " must be floating, got ", v.scalar_type());
}

inline Tensor small_acc(const Tensor& v, const Tensor& x, int64_t numel, at::IntArrayRef shape,
                        const char* op, const char* name) {
  check_small(v, x, numel, shape, op, name);
  const at::ScalarType acc = acc_type(x.scalar_type());
  if (v.scalar_type() == acc && v.is_contiguous()) {
    return v.view(shape);  // the common case: one call instead of three (the op is overhead-bound at toy shapes)
  }
  return v.reshape(shape).to(acc).contiguous();
}

// A gradient g (contiguous, p's number of elements) shaped and typed like the parameter p.
inline Tensor like_param(const Tensor& g, const Tensor& p) {
  return g.scalar_type() == p.scalar_type() ? g.view(p.sizes()) : g.to(p.scalar_type()).view(p.sizes());
}

// The residual of gc_add, checked against x and put in x's layout (undefined when absent).
inline Tensor residual_like_x(const c10::optional<Tensor>& residual, const Tensor& x, bool nhwc, const char* op) {
  if (!residual.has_value()) {
    return Tensor();
  }
  TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(), ", got ",
              residual->sizes());
  TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual dtype ", residual->scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(residual->device() == x.device(), op, ": residual is on ", residual->device(), " but x is on ",
              x.device());
  return in_layout(*residual, nhwc);
}

// ---------------------------------------------------------------------------------------
// gc_context(x, w, b) -> (context [N, C], lse [N]), both in the accumulation type
//   logits_j = w . x[:, j] + b;  p = softmax_j(logits);  context[c] = sum_j p_j x[c, j]
//   lse = log(sum_j exp(logits_j)) (saved for the backward: p_j = exp(logits_j - lse)).
//   The context stays in the accumulation type: the transform that follows computes in it, and
//   the backward (gc_context_backward's g . context, the transform's weight gradient) needs the
//   unrounded value (rounded to bf16 it biases the weight gradients by ~2^-9 of their scale).
//   Logits of -inf (an -inf in x, or w . x overflowing) get weight 0 even when a whole chunk of
//   positions has nothing else: the kernels never form exp(-inf - (-inf)). Only a sample whose
//   logits are all -inf gets a NaN context (and lse -inf), as torch.softmax gives.
// Kernels::context_forward(Dense4d, w_acc [C]) -> (context [N, C], lse_without_bias [N]).
template <class Kernels>
std::tuple<Tensor, Tensor> gc_context_op(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b) {
  constexpr const char* op = "gcrepro::gc_context";
  check_x(x, op);
  const Dense4d d = as_dense(x);
  const Tensor wv = small_acc(w, x, d.C, {d.C}, op, "w (conv_mask weight)");
  if (d.N == 0) {
    const auto acc_opts = x.options().dtype(acc_type(x.scalar_type()));
    return {at::empty({0, d.C}, acc_opts), at::empty({0}, acc_opts)};
  }
  auto [context, lse] = Kernels::context_forward(d, wv);
  if (b.has_value()) {
    lse = lse + small_acc(*b, x, 1, {}, op, "b (conv_mask bias)");
  }
  return {context, lse};
}

// gc_context_backward(grad_context [N, C], grad_lse [N]?, x, w, b?, context, lse, grad_x_add?)
//   -> (grad_x like x, grad_w like w). grad_b is sum(grad_lse) (the softmax cancels b):
//   the caller forms it, no kernel needed.
//   With g = grad_context: dL/dlogit_j = p_j (g . x[:, j] - g . context + grad_lse),
//   grad_x[c, j] = p_j g_c + w_c dL/dlogit_j (+ grad_x_add[c, j]),
//   grad_w[c] = sum_{n, j} dL/dlogit_j x[c, j].
//   grad_x_add (x's shape and dtype) is the gradient x receives from the rest of the GC block
//   (the channel add): summed into grad_x in the same pass instead of by autograd afterwards.
// Kernels::context_backward(Dense4d, w_acc [C], g_acc [N, C], gdot [N], lse_nb [N], add or undefined)
//   -> (grad_x in x's layout, grad_w [C] accumulation type)
template <class Kernels>
std::tuple<Tensor, Tensor> gc_context_backward_op(const Tensor& grad_context, const c10::optional<Tensor>& grad_lse,
                                                  const Tensor& x, const Tensor& w,
                                                  const c10::optional<Tensor>& b, const Tensor& context,
                                                  const Tensor& lse, const c10::optional<Tensor>& grad_x_add) {
  constexpr const char* op = "gcrepro::gc_context_backward";
  check_x(x, op);
  const Dense4d d = as_dense(x);
  const std::array<int64_t, 2> nc{d.N, d.C};  // (an IntArrayRef of a braced list would dangle)
  const Tensor wv = small_acc(w, x, d.C, {d.C}, op, "w");
  const Tensor g = small_acc(grad_context, x, d.N * d.C, nc, op, "grad_context");
  const Tensor ctx = small_acc(context, x, d.N * d.C, nc, op, "context");
  Tensor lse_nb = small_acc(lse, x, d.N, {d.N}, op, "lse");
  if (b.has_value()) {
    lse_nb = lse_nb - small_acc(*b, x, 1, {}, op, "b");
  }
  Tensor gdot = (g * ctx).sum(1);  // [N]: g . context
  if (grad_lse.has_value()) {
    gdot = gdot - small_acc(*grad_lse, x, d.N, {d.N}, op, "grad_lse");
  }
  Tensor add;
  if (grad_x_add.has_value()) {
    TORCH_CHECK(grad_x_add->sizes() == x.sizes() && grad_x_add->scalar_type() == x.scalar_type() &&
                    grad_x_add->device() == x.device(),
                op, ": grad_x_add (", grad_x_add->sizes(), ", ", grad_x_add->scalar_type(), ", ",
                grad_x_add->device(), ") must match x (", x.sizes(), ", ", x.scalar_type(), ", ", x.device(), ")");
    add = in_layout(*grad_x_add, d.nhwc);
  }
  if (d.N == 0) {
    return {empty_4d(d.t, d.nhwc), at::zeros_like(w)};
  }
  auto [grad_x, grad_w] = Kernels::context_backward(d, wv, g, gdot.contiguous(), lse_nb.contiguous(), add);
  return {grad_x, like_param(grad_w, w)};
}

// ---------------------------------------------------------------------------------------
// gc_add(x, t, residual?, relu) -> out = x + t[:, :, None, None] (+ residual) (ReLU), in x's
// dtype and layout; the sum is formed in the accumulation type and rounded once.
// Kernels::add_forward(Dense4d x, t_acc [N, C], residual (same layout) or undefined, relu) -> out
template <class Kernels>
Tensor gc_add_op(const Tensor& x, const Tensor& t, const c10::optional<Tensor>& residual, bool relu) {
  constexpr const char* op = "gcrepro::gc_add";
  check_x(x, op);
  const Dense4d d = as_dense(x);
  const std::array<int64_t, 2> nc{d.N, d.C};
  const Tensor tv = small_acc(t, x, d.N * d.C, nc, op, "t (the channel term)");
  const Tensor res = residual_like_x(residual, x, d.nhwc, op);
  if (d.N == 0) {
    return empty_4d(d.t, d.nhwc);
  }
  return Kernels::add_forward(d, tv, res, relu);
}

// gc_add_relu_backward(grad_out, out) -> (grad_in = grad_out * (out > 0) in out's layout,
//                                          grad_t = grad_in summed over HW [N, C], accumulation type)
// (Without ReLU the backward is grad_out itself plus a plain sum over HW: done in Python.)
template <class Kernels>
std::tuple<Tensor, Tensor> gc_add_relu_backward_op(const Tensor& grad_out, const Tensor& out) {
  constexpr const char* op = "gcrepro::gc_add_relu_backward";
  check_x(out, op);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_out.scalar_type() == out.scalar_type() &&
                  grad_out.device() == out.device(),
              op, ": grad_out (", grad_out.sizes(), ", ", grad_out.scalar_type(), ", ", grad_out.device(),
              ") must match out (", out.sizes(), ", ", out.scalar_type(), ", ", out.device(), ")");
  const Dense4d d = as_dense(out);
  const Tensor g = in_layout(grad_out, d.nhwc);
  if (d.N == 0) {
    return {empty_4d(d.t, d.nhwc), at::empty({0, d.C}, out.options().dtype(acc_type(out.scalar_type())))};
  }
  return Kernels::add_relu_backward(d, g);
}

}  // namespace gcrepro
