// CPU kernels of gcrepro::gc_add (x + channel term (+ residual) (ReLU)) and of its ReLU
// backward (math and layouts: ../gc_ops.h). Compiled once per vector ISA, like context_kernels.h.
// One pass over the tensors; rows of contiguous memory (H*W per (n, c) for NCHW, C per
// (n, position) for channels_last) are split over threads with at::parallel_for; the inner loops
// are vectorised by the compiler. Outputs come from torch's allocator (empty_4d, ../gc_ops.h).

// (no include guard: each ISA translation unit includes this file once, in its own namespace)

namespace {

constexpr int64_t kGrainElements = 32768;  // elements per parallel work item (at least)

template <typename scalar_t, typename acc_t, bool kResidual, bool kRelu>
inline void add_row(const scalar_t* x, const scalar_t* r, const acc_t* t, bool t_scalar, scalar_t* out, int64_t len) {
  if (t_scalar) {
    const acc_t tv = t[0];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      acc_t v = static_cast<acc_t>(x[i]) + tv;
      if constexpr (kResidual) v += static_cast<acc_t>(r[i]);
      if constexpr (kRelu) v = v < acc_t(0) ? acc_t(0) : v;  // keeps NaN, like torch.relu
      out[i] = static_cast<scalar_t>(v);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      acc_t v = static_cast<acc_t>(x[i]) + t[i];
      if constexpr (kResidual) v += static_cast<acc_t>(r[i]);
      if constexpr (kRelu) v = v < acc_t(0) ? acc_t(0) : v;  // keeps NaN, like torch.relu
      out[i] = static_cast<scalar_t>(v);
    }
  }
}

template <typename scalar_t, bool kResidual, bool kRelu>
void add_forward_impl(const Dense4d& d, const Tensor& t, const Tensor& res, Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = d.C, HW = d.HW;
  const scalar_t* x = d.t.const_data_ptr<scalar_t>();
  const scalar_t* r = kResidual ? res.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* tp = t.const_data_ptr<acc_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  // NCHW: row = (n, c), length HW, one term value. NHWC: row = (n, position), length C, term row n.
  const int64_t rows = d.nhwc ? d.N * HW : d.N * C;
  const int64_t len = d.nhwc ? C : HW;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / len);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t off = row * len;
      const acc_t* trow = d.nhwc ? tp + (row / HW) * C : tp + row;
      add_row<scalar_t, acc_t, kResidual, kRelu>(x + off, kResidual ? r + off : nullptr, trow, !d.nhwc, o + off, len);
    }
  });
}

// grad_in = grad * (out > 0) over `len` contiguous values; returns their sum (NCHW: one row).
// (Raw pointer arguments, not lambda captures: the compiler then knows they do not change in
// the loop and vectorises it; the branch-free select avoids mispredicted branches.)
template <typename scalar_t, typename acc_t>
inline acc_t relu_backward_row(const scalar_t* g, const scalar_t* y, scalar_t* gi, int64_t len) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t gv = static_cast<acc_t>(g[i]);
    const acc_t v = static_cast<acc_t>(y[i]) > acc_t(0) ? gv : acc_t(0);
    gi[i] = static_cast<scalar_t>(v);
    sum += v;
  }
  return sum;
}

// channels_last: `rows` positions of C channels; acc[c] += grad_in of each row.
template <typename scalar_t, typename acc_t>
inline void relu_backward_rows_nhwc(const scalar_t* g, const scalar_t* y, scalar_t* gi, acc_t* acc, int64_t rows,
                                    int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const acc_t gv = static_cast<acc_t>(g[off + c]);
      const acc_t v = static_cast<acc_t>(y[off + c]) > acc_t(0) ? gv : acc_t(0);
      gi[off + c] = static_cast<scalar_t>(v);
      acc[c] += v;
    }
  }
}

template <typename scalar_t>
void add_relu_backward_impl(const Dense4d& d, const Tensor& grad, Tensor& grad_in, Tensor& grad_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = d.N, C = d.C, HW = d.HW;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* y = d.t.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  acc_t* gt = grad_t.mutable_data_ptr<acc_t>();
  if (!d.nhwc) {
    // Row (n, c): mask, store and sum H*W contiguous values.
    at::parallel_for(0, N * C, std::max<int64_t>(1, kGrainElements / HW), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        gt[row] = relu_backward_row<scalar_t, acc_t>(g + row * HW, y + row * HW, gi + row * HW, HW);
      }
    });
  } else {
    // channels_last: per sample, split the positions into ranges; each range sums its rows
    // of C into its own partial row, merged afterwards (deterministic, no atomics).
    const bool parallel = N * C * HW >= 2 * kGrainElements && at::get_num_threads() > 1;
    const int64_t want = parallel ? (2 * at::get_num_threads() + N - 1) / N : 1;
    const int64_t splits = std::clamp<int64_t>(want, 1, HW);
    const int64_t per = (HW + splits - 1) / splits;
    std::vector<acc_t> part(N * splits * C, acc_t(0));
    at::parallel_for(0, N * splits, parallel ? 1 : N * splits, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / splits, k = task % splits;
        const int64_t jb = k * per, je = std::min(HW, (k + 1) * per);
        if (jb >= je) continue;
        const int64_t off = (n * HW + jb) * C;
        relu_backward_rows_nhwc<scalar_t, acc_t>(g + off, y + off, gi + off, part.data() + task * C, je - jb, C);
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        acc_t sum = 0;
        for (int64_t k = 0; k < splits; ++k) sum += part[(n * splits + k) * C + c];
        gt[n * C + c] = sum;
      }
    }
  }
}

}  // namespace

Tensor add_forward(const Dense4d& d, const Tensor& t, const Tensor& res, bool relu) {
  Tensor out = empty_4d(d.t, d.nhwc);
  const bool has_res = res.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_add_cpu", [&] {
    if (has_res && relu) add_forward_impl<scalar_t, true, true>(d, t, res, out);
    else if (has_res) add_forward_impl<scalar_t, true, false>(d, t, res, out);
    else if (relu) add_forward_impl<scalar_t, false, true>(d, t, res, out);
    else add_forward_impl<scalar_t, false, false>(d, t, res, out);
  });
  return out;
}

Tensor_pair add_relu_backward(const Dense4d& d, const Tensor& grad) {
  Tensor grad_in = empty_4d(d.t, d.nhwc);
  Tensor grad_t = at::empty({d.N, d.C}, d.t.options().dtype(acc_type(d.t.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_add_relu_backward_cpu", [&] {
    add_relu_backward_impl<scalar_t>(d, grad, grad_in, grad_t);
  });
  return {grad_in, grad_t};
}
