// CPU kernels of gcrepro::gc_context and its backward (math and layouts: ../gc_ops.h).
// Compiled once per vector ISA: included by kernels_baseline.cpp and kernels_avx2.cpp inside
// namespace gcrepro::cpu::<isa> (entry points declared in isa.h).
//
// Work split: each sample's H*W positions are cut into `splits` ranges so that N * splits
// tasks keep every thread busy (at::parallel_for); a task walks its range in chunks of
// `chunk` positions. Per chunk, the logits are computed in a first sweep over the chunk of x
// and the same chunk (sized to stay in L2) is swept again from cache for the weighted sum,
// with an online softmax (running max and sum) across chunks. Partial results of the tasks
// are merged per sample at the end. Inner loops run over contiguous memory (H*W for NCHW,
// C for channels_last) and are vectorised by the compiler (`omp simd`, -O3, -fopenmp) for the
// ISA of the including translation unit (SSE2 baseline, or AVX2+FMA).

// (no include guard: each ISA translation unit includes this file once, in its own namespace)

namespace {

// Bytes of x per chunk: small enough that the second sweep hits L2...
constexpr int64_t kChunkBytes = 128 * 1024;
// ...except that for NCHW a chunk is C rows of `chunk` positions, H*W apart: rows shorter than
// 4 KiB defeat the hardware prefetcher (and touch a page per row), which costs more than
// re-reading a larger chunk from L3 (benchmarks/RESULTS.md, 2026-11-30).
constexpr int64_t kMinRowBytesNCHW = 4096;
// Below this many elements of x the op runs on the calling thread: waking the thread pool
// costs more than it saves (and gradcheck calls the op thousands of times on tiny inputs).
constexpr int64_t kParallelElements = 1 << 16;

int64_t chunk_positions(int64_t C, int64_t elem_size, bool nhwc) {
  const int64_t j = kChunkBytes / std::max<int64_t>(C * elem_size, 1) / 16 * 16;
  return std::clamp<int64_t>(j, nhwc ? 16 : kMinRowBytesNCHW / elem_size, 4096);
}

struct Split {
  int64_t chunk;   // positions per chunk
  int64_t splits;  // position ranges per sample (tasks = N * splits)
  int64_t per;     // positions per range (a multiple of chunk)
  int64_t grain;   // at::parallel_for grain: 1, or all tasks (run inline) for small inputs
};

Split make_split(int64_t N, int64_t C, int64_t HW, int64_t elem_size, bool nhwc) {
  Split s;
  s.chunk = chunk_positions(C, elem_size, nhwc);
  const int64_t chunks = (HW + s.chunk - 1) / s.chunk;
  const bool parallel = N * C * HW >= kParallelElements && at::get_num_threads() > 1;
  const int64_t want = parallel ? (2 * at::get_num_threads() + N - 1) / N : 1;  // ~2 tasks per thread
  const int64_t splits = std::clamp<int64_t>(want, 1, chunks);
  s.per = (chunks + splits - 1) / splits * s.chunk;
  s.splits = (HW + s.per - 1) / s.per;
  s.grain = parallel ? 1 : N * s.splits;
  return s;
}

// m, or 0 where m is -inf: the reference point of exp(logit - m) when every logit is -inf.
template <typename acc_t>
inline acc_t finite_or_zero(acc_t m) {
  return m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : m;
}

template <typename acc_t, typename scalar_t>
inline acc_t dot(const acc_t* a, const scalar_t* x, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * static_cast<acc_t>(x[i]);
  return s;
}

// l[j] += sum_{r < R} w[r] x0[r * HW + j] for j < jn: R channel rows of one chunk per sweep.
template <int R, typename scalar_t, typename acc_t>
inline void logits_rows(const scalar_t* x0, int64_t HW, int64_t jn, const acc_t* w, acc_t* l) {
  acc_t wr[R];
  for (int r = 0; r < R; ++r) wr[r] = w[r];
#pragma omp simd
  for (int64_t j = 0; j < jn; ++j) {
    acc_t a = 0;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) a += wr[r] * static_cast<acc_t>(x0[r * HW + j]);
    l[j] += a;
  }
}

// acc[r] = acc[r] * scale + sum_{j < jn} p[j] x0[r * HW + j] for r < 8: eight rows per sweep,
// eight independent sums (the FMA latency is hidden), p loaded once for all of them.
template <typename scalar_t, typename acc_t>
inline void weighted_rows8(const scalar_t* x0, int64_t HW, int64_t jn, const acc_t* p, acc_t scale, acc_t* acc) {
  const scalar_t *x1 = x0 + HW, *x2 = x1 + HW, *x3 = x2 + HW, *x4 = x3 + HW, *x5 = x4 + HW, *x6 = x5 + HW,
                 *x7 = x6 + HW;
  acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0, d4 = 0, d5 = 0, d6 = 0, d7 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3, d4, d5, d6, d7)
  for (int64_t j = 0; j < jn; ++j) {
    const acc_t pj = p[j];
    d0 += pj * static_cast<acc_t>(x0[j]);
    d1 += pj * static_cast<acc_t>(x1[j]);
    d2 += pj * static_cast<acc_t>(x2[j]);
    d3 += pj * static_cast<acc_t>(x3[j]);
    d4 += pj * static_cast<acc_t>(x4[j]);
    d5 += pj * static_cast<acc_t>(x5[j]);
    d6 += pj * static_cast<acc_t>(x6[j]);
    d7 += pj * static_cast<acc_t>(x7[j]);
  }
  const acc_t d[8] = {d0, d1, d2, d3, d4, d5, d6, d7};
  for (int r = 0; r < 8; ++r) acc[r] = acc[r] * scale + d[r];
}

// l[j] = w . x[:, j0 + j] for j < jn, and s[j] = g . x[:, j0 + j] when s != nullptr (the backward).
template <typename scalar_t, typename acc_t>
inline void chunk_logits(const scalar_t* xn, bool nhwc, int64_t C, int64_t HW, int64_t j0, int64_t jn,
                         const acc_t* w, const acc_t* g, acc_t* l, acc_t* s) {
  if (!nhwc) {
    std::fill(l, l + jn, acc_t(0));
    if (s) std::fill(s, s + jn, acc_t(0));
    // Several channel rows per sweep: fewer loads/stores of l (and s), and independent read
    // streams in flight (sixteen for the forward's logits alone, four with s).
    int64_t c = 0;
    if (!s) {
      for (; c + 16 <= C; c += 16) logits_rows<16>(xn + c * HW + j0, HW, jn, w + c, l);
      for (; c + 4 <= C; c += 4) logits_rows<4>(xn + c * HW + j0, HW, jn, w + c, l);
      for (; c < C; ++c) logits_rows<1>(xn + c * HW + j0, HW, jn, w + c, l);
      return;
    }
    // The backward's logits l = w . x and s = g . x, in the same sweep.
    for (; c + 4 <= C; c += 4) {
      const scalar_t* x0 = xn + c * HW + j0;
      const scalar_t* x1 = x0 + HW;
      const scalar_t* x2 = x1 + HW;
      const scalar_t* x3 = x2 + HW;
      const acc_t w0 = w[c], w1 = w[c + 1], w2 = w[c + 2], w3 = w[c + 3];
      const acc_t g0 = g[c], g1 = g[c + 1], g2 = g[c + 2], g3 = g[c + 3];
#pragma omp simd
      for (int64_t j = 0; j < jn; ++j) {
        const acc_t v0 = static_cast<acc_t>(x0[j]), v1 = static_cast<acc_t>(x1[j]);
        const acc_t v2 = static_cast<acc_t>(x2[j]), v3 = static_cast<acc_t>(x3[j]);
        l[j] += (w0 * v0 + w1 * v1) + (w2 * v2 + w3 * v3);
        s[j] += (g0 * v0 + g1 * v1) + (g2 * v2 + g3 * v3);
      }
    }
    for (; c < C; ++c) {
      const scalar_t* xr = xn + c * HW + j0;
      const acc_t wc = w[c], gc = g[c];
#pragma omp simd
      for (int64_t j = 0; j < jn; ++j) {
        const acc_t v = static_cast<acc_t>(xr[j]);
        l[j] += wc * v;
        s[j] += gc * v;
      }
    }
  } else {
    for (int64_t j = 0; j < jn; ++j) {
      const scalar_t* xr = xn + (j0 + j) * C;
      l[j] = dot(w, xr, C);
      if (s) s[j] = dot(g, xr, C);
    }
  }
}

// One task of the forward: positions [jb, je) of one sample -> running max m, sum of
// exp(logit - m) s, and acc[c] = sum_j exp(logit_j - m) x[c, j] (m read as 0 while it is -inf).
template <typename scalar_t, typename acc_t>
void forward_task(const scalar_t* xn, bool nhwc, int64_t C, int64_t HW, int64_t jb, int64_t je, int64_t chunk,
                  const acc_t* w, acc_t* out_m, acc_t* out_s, acc_t* acc, acc_t* l) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  acc_t s = 0;
  std::fill(acc, acc + C, acc_t(0));
  for (int64_t j0 = jb; j0 < je; j0 += chunk) {
    const int64_t jn = std::min(chunk, je - j0);
    chunk_logits<scalar_t, acc_t>(xn, nhwc, C, HW, j0, jn, w, nullptr, l, nullptr);
    acc_t cm = l[0];
    for (int64_t j = 1; j < jn; ++j) cm = std::max(cm, l[j]);
    const acc_t m_new = std::max(m, cm);
    // Weights are exp(logit - ref). ref = m_new, except while every logit so far is -inf: then
    // exp(-inf - (-inf)) would be NaN; with ref 0 those weights are 0, as the softmax has them.
    const acc_t ref = finite_or_zero(m_new);
    const acc_t scale = std::exp(m - ref);  // 0 on the first chunk (m = -inf)
    acc_t ps = 0;
    for (int64_t j = 0; j < jn; ++j) {
      l[j] = std::exp(l[j] - ref);  // l now holds the unnormalised softmax weights
      ps += l[j];
    }
    s = s * scale + ps;
    if (!nhwc) {
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) weighted_rows8<scalar_t, acc_t>(xn + c * HW + j0, HW, jn, l, scale, acc + c);
      for (; c < C; ++c) acc[c] = acc[c] * scale + dot(l, xn + c * HW + j0, jn);
    } else {
      if (scale != acc_t(1)) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) acc[c] *= scale;
      }
      for (int64_t j = 0; j < jn; ++j) {
        const scalar_t* xr = xn + (j0 + j) * C;
        const acc_t pj = l[j];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) acc[c] += pj * static_cast<acc_t>(xr[c]);
      }
    }
    m = m_new;
  }
  *out_m = m;
  *out_s = s;
}

// One task of the backward: positions [jb, je) of one sample. Writes grad_x there and
// adds sum_j dlogit_j x[c, j] into dw (this task's own row of partial sums). kAdd: grad_x also
// gets axn (the gradient x receives from elsewhere, laid out like x) added in the same store.
template <typename scalar_t, typename acc_t, bool kAdd>
void backward_task(const scalar_t* xn, const scalar_t* axn, scalar_t* dxn, bool nhwc, int64_t C, int64_t HW,
                   int64_t jb, int64_t je, int64_t chunk, const acc_t* w, const acc_t* g, acc_t gdot, acc_t lse,
                   acc_t* dw, acc_t* l, acc_t* s) {
  std::fill(dw, dw + C, acc_t(0));
  for (int64_t j0 = jb; j0 < je; j0 += chunk) {
    const int64_t jn = std::min(chunk, je - j0);
    chunk_logits<scalar_t, acc_t>(xn, nhwc, C, HW, j0, jn, w, g, l, s);
    for (int64_t j = 0; j < jn; ++j) {
      const acc_t p = std::exp(l[j] - lse);
      l[j] = p;                  // l: softmax weight p_j
      s[j] = p * (s[j] - gdot);  // s: dL/dlogit_j
    }
    if (!nhwc) {
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* xr = xn + c * HW + j0;
        const scalar_t* axr = kAdd ? axn + c * HW + j0 : nullptr;
        scalar_t* dxr = dxn + c * HW + j0;
        const acc_t gc = g[c];
        const acc_t wc = w[c];
        acc_t d = 0;
#pragma omp simd reduction(+ : d)
        for (int64_t j = 0; j < jn; ++j) {
          acc_t v = l[j] * gc + wc * s[j];
          if constexpr (kAdd) v += static_cast<acc_t>(axr[j]);
          dxr[j] = static_cast<scalar_t>(v);
          d += s[j] * static_cast<acc_t>(xr[j]);
        }
        dw[c] += d;
      }
    } else {
      for (int64_t j = 0; j < jn; ++j) {
        const scalar_t* xr = xn + (j0 + j) * C;
        const scalar_t* axr = kAdd ? axn + (j0 + j) * C : nullptr;
        scalar_t* dxr = dxn + (j0 + j) * C;
        const acc_t pj = l[j];
        const acc_t dl = s[j];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          acc_t v = pj * g[c] + w[c] * dl;
          if constexpr (kAdd) v += static_cast<acc_t>(axr[c]);
          dxr[c] = static_cast<scalar_t>(v);
          dw[c] += dl * static_cast<acc_t>(xr[c]);
        }
      }
    }
  }
}

// Note: `#pragma omp simd` cannot sit inside the AT_DISPATCH macro's lambda (a pragma in a
// macro argument), so the typed bodies are functions called from the dispatch.
// (Partial results and scratch rows are std::vectors: at toy shapes a tensor allocation per buffer
// costs more than the arithmetic.)
template <typename scalar_t>
void context_forward_impl(const Dense4d& d, const Split& sp, const Tensor& w, Tensor& context, Tensor& lse) {
  // (context and lse in the accumulation type: ../gc_ops.h)
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = d.N, C = d.C, HW = d.HW;
  const scalar_t* x = d.t.const_data_ptr<scalar_t>();
  const acc_t* wp = w.const_data_ptr<acc_t>();
  std::vector<acc_t> part(N * sp.splits * (C + 2));
  acc_t* pm = part.data();                   // [N * splits] running max
  acc_t* ps = pm + N * sp.splits;            // [N * splits] sum of exp
  acc_t* pa = ps + N * sp.splits;            // [N * splits, C] weighted sums
  at::parallel_for(0, N * sp.splits, sp.grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> l(sp.chunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / sp.splits, k = task % sp.splits;
      const int64_t jb = k * sp.per, je = std::min(HW, jb + sp.per);
      forward_task<scalar_t, acc_t>(x + n * C * HW, d.nhwc, C, HW, jb, je, sp.chunk, wp, pm + task, ps + task,
                                    pa + task * C, l.data());
    }
  });
  // Merge the tasks of each sample: rescale every partial to the sample's max (0 if it is -inf:
  // every logit -inf, S = 0, context 0/0 = NaN and lse -inf, as the reference has them).
  acc_t* out = context.mutable_data_ptr<acc_t>();
  acc_t* lp = lse.mutable_data_ptr<acc_t>();
  {  // (serial: N * splits * C values)
    std::vector<acc_t> scale(sp.splits);
    std::vector<acc_t> sum(C);
    for (int64_t n = 0; n < N; ++n) {
      const acc_t* m = pm + n * sp.splits;
      const acc_t M = *std::max_element(m, m + sp.splits);
      const acc_t ref = finite_or_zero(M);
      acc_t S = 0;
      for (int64_t k = 0; k < sp.splits; ++k) {
        scale[k] = std::exp(m[k] - ref);
        S += ps[n * sp.splits + k] * scale[k];
      }
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for (int64_t k = 0; k < sp.splits; ++k) {
        const acc_t* a = pa + (n * sp.splits + k) * C;
        const acc_t sk = scale[k] / S;
        acc_t* su = sum.data();
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) su[c] += sk * a[c];
      }
      std::copy(sum.begin(), sum.end(), out + n * C);
      lp[n] = M + std::log(S);
    }
  }
}

template <typename scalar_t, bool kAdd>
void context_backward_impl(const Dense4d& d, const Split& sp, const Tensor& w, const Tensor& g, const Tensor& gdot,
                           const Tensor& lse, const Tensor& add, Tensor& grad_x, Tensor& grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = d.N, C = d.C, HW = d.HW;
  const scalar_t* x = d.t.const_data_ptr<scalar_t>();
  const scalar_t* ax = kAdd ? add.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
  const acc_t* wp = w.const_data_ptr<acc_t>();
  const acc_t* gp = g.const_data_ptr<acc_t>();
  const acc_t* gd = gdot.const_data_ptr<acc_t>();
  const acc_t* lp = lse.const_data_ptr<acc_t>();
  std::vector<acc_t> part_dw(N * sp.splits * C);  // each task's row of sum_j dlogit_j x[c, j]
  acc_t* dw = part_dw.data();
  at::parallel_for(0, N * sp.splits, sp.grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> l(sp.chunk), s(sp.chunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / sp.splits, k = task % sp.splits;
      const int64_t jb = k * sp.per, je = std::min(HW, jb + sp.per);
      backward_task<scalar_t, acc_t, kAdd>(x + n * C * HW, kAdd ? ax + n * C * HW : nullptr, dx + n * C * HW, d.nhwc,
                                           C, HW, jb, je, sp.chunk, wp, gp + n * C, gd[n], lp[n], dw + task * C,
                                           l.data(), s.data());
    }
  });
  acc_t* gw = grad_w.mutable_data_ptr<acc_t>();  // the tasks' rows summed in a fixed order
  std::copy(dw, dw + C, gw);
  for (int64_t task = 1; task < N * sp.splits; ++task) {
    const acc_t* row = dw + task * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) gw[c] += row[c];
  }
}

}  // namespace

Tensor_pair context_forward(const Dense4d& d, const Tensor& w) {
  const Split sp = make_split(d.N, d.C, d.HW, d.t.element_size(), d.nhwc);
  const auto acc_opts = d.t.options().dtype(w.scalar_type());
  Tensor context = at::empty({d.N, d.C}, acc_opts);
  Tensor lse = at::empty({d.N}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_context_cpu", [&] {
    context_forward_impl<scalar_t>(d, sp, w, context, lse);
  });
  return {context, lse};
}

Tensor_pair context_backward(const Dense4d& d, const Tensor& w, const Tensor& g, const Tensor& gdot,
                             const Tensor& lse, const Tensor& add) {
  const Split sp = make_split(d.N, d.C, d.HW, d.t.element_size(), d.nhwc);
  Tensor grad_x = empty_4d(d.t, d.nhwc);
  Tensor grad_w = at::empty({d.C}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.t.scalar_type(), "gc_context_backward_cpu", [&] {
    if (add.defined()) context_backward_impl<scalar_t, true>(d, sp, w, g, gdot, lse, add, grad_x, grad_w);
    else context_backward_impl<scalar_t, false>(d, sp, w, g, gdot, lse, add, grad_x, grad_w);
  });
  return {grad_x, grad_w};
}
