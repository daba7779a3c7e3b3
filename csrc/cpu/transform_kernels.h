// CPU kernels of the GC block's transform T on [N, C] vectors (../gc_block.h):
//   h = context W1^T + b1 [N, P];  a = ReLU(LayerNorm_P(h) * ln_w + ln_b);  term = a W2^T + b2 [N, C]
// and its backward. Compiled once per vector ISA, like context_kernels.h (whose `dot` they use).
// Plain loops on the calling thread: at the shapes the model runs (N <= 16, C <= 2048, P = C/16 or
// C/4) T is a few hundred thousand multiply-adds, less than what a call of a BLAS kernel costs at
// toy shapes (benchmarks/RESULTS.md). Every tensor is contiguous, in the accumulation type acc_t.

// (no include guard: each ISA translation unit includes this file once, in its own namespace)

namespace {

template <typename acc_t>
void transform_forward_impl(int64_t N, int64_t C, int64_t P, const acc_t* ctx, const acc_t* w1, const acc_t* b1,
                            const acc_t* lnw, const acc_t* lnb, acc_t eps, const acc_t* w2, const acc_t* b2, acc_t* h,
                            acc_t* mean, acc_t* rstd, acc_t* a, acc_t* term) {
  for (int64_t n = 0; n < N; ++n) {
    const acc_t* cn = ctx + n * C;
    acc_t* hn = h + n * P;
    acc_t* an = a + n * P;
    for (int64_t p = 0; p < P; ++p) hn[p] = b1[p] + dot(w1 + p * C, cn, C);
    // LayerNorm over the P values, two passes (mean, then variance): as exact as the reference.
    acc_t mu = 0;
    for (int64_t p = 0; p < P; ++p) mu += hn[p];
    mu /= static_cast<acc_t>(P);
    acc_t var = 0;
    for (int64_t p = 0; p < P; ++p) var += (hn[p] - mu) * (hn[p] - mu);
    var /= static_cast<acc_t>(P);
    const acc_t rs = acc_t(1) / std::sqrt(var + eps);
    mean[n] = mu;
    rstd[n] = rs;
    for (int64_t p = 0; p < P; ++p) {
      const acc_t v = (hn[p] - mu) * rs * lnw[p] + lnb[p];
      an[p] = v < acc_t(0) ? acc_t(0) : v;  // keeps NaN, like torch.relu
    }
    acc_t* tn = term + n * C;
    for (int64_t c = 0; c < C; ++c) tn[c] = b2[c] + dot(w2 + c * P, an, P);
  }
}

// One row of a linear layer's backward, for an output element with gradient g, weight row w and
// input v: the input's gradient gi += g * w, the weight row's gradient gw += g * v.
template <typename acc_t>
inline void linear_backward_row(acc_t g, const acc_t* w, const acc_t* v, acc_t* gi, acc_t* gw, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    gi[i] += g * w[i];
    gw[i] += g * v[i];
  }
}

// gt = dL/dterm [N, C] -> g_ctx [N, C], gdot [N] = g_ctx . ctx (what the context backward needs),
// and the parameter gradients (summed over the N samples). work: 3 * P values.
template <typename acc_t>
void transform_backward_impl(int64_t N, int64_t C, int64_t P, const acc_t* gt, const acc_t* ctx, const acc_t* h,
                             const acc_t* mean, const acc_t* rstd, const acc_t* a, const acc_t* w1, const acc_t* lnw,
                             const acc_t* w2, acc_t* g_ctx, acc_t* gdot, acc_t* g_w1, acc_t* g_b1, acc_t* g_lnw,
                             acc_t* g_lnb, acc_t* g_w2, acc_t* g_b2, acc_t* work) {
  std::fill(g_w1, g_w1 + P * C, acc_t(0));
  std::fill(g_b1, g_b1 + P, acc_t(0));
  std::fill(g_lnw, g_lnw + P, acc_t(0));
  std::fill(g_lnb, g_lnb + P, acc_t(0));
  std::fill(g_w2, g_w2 + C * P, acc_t(0));
  std::fill(g_b2, g_b2 + C, acc_t(0));
  acc_t* ga = work;          // dL/da [P]
  acc_t* xhat = work + P;    // normalised h [P]
  acc_t* gh = work + 2 * P;  // dL/dh [P]
  for (int64_t n = 0; n < N; ++n) {
    const acc_t* gtn = gt + n * C;
    const acc_t* an = a + n * P;
    const acc_t* cn = ctx + n * C;
    // conv2: ga = gt W2, g_w2 += gt^T a, g_b2 += gt
    std::fill(ga, ga + P, acc_t(0));
    for (int64_t c = 0; c < C; ++c) {
      linear_backward_row(gtn[c], w2 + c * P, an, ga, g_w2 + c * P, P);
      g_b2[c] += gtn[c];
    }
    // ReLU, then LayerNorm: dh = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy ln_w
    const acc_t mu = mean[n], rs = rstd[n];
    acc_t s1 = 0, s2 = 0;
    for (int64_t p = 0; p < P; ++p) {
      const acc_t gy = an[p] > acc_t(0) ? ga[p] : acc_t(0);
      xhat[p] = (h[n * P + p] - mu) * rs;
      g_lnw[p] += gy * xhat[p];
      g_lnb[p] += gy;
      ga[p] = gy * lnw[p];  // ga now holds dxhat
      s1 += ga[p];
      s2 += ga[p] * xhat[p];
    }
    s1 /= static_cast<acc_t>(P);
    s2 /= static_cast<acc_t>(P);
    for (int64_t p = 0; p < P; ++p) gh[p] = rs * (ga[p] - s1 - xhat[p] * s2);
    // conv1: g_ctx = gh W1, g_w1 += gh^T ctx, g_b1 += gh
    acc_t* gcn = g_ctx + n * C;
    std::fill(gcn, gcn + C, acc_t(0));
    for (int64_t p = 0; p < P; ++p) {
      linear_backward_row(gh[p], w1 + p * C, cn, gcn, g_w1 + p * C, C);
      g_b1[p] += gh[p];
    }
    gdot[n] = dot(gcn, cn, C);
  }
}

}  // namespace

Tensor_5 transform_forward(const Tensor& ctx, const Tensor& w1, const Tensor& b1, const Tensor& lnw, const Tensor& lnb,
                           double eps, const Tensor& w2, const Tensor& b2) {
  const int64_t N = ctx.size(0), C = ctx.size(1), P = w1.size(0);
  const auto opts = ctx.options();
  Tensor h = at::empty({N, P}, opts), mean = at::empty({N, 1}, opts), rstd = at::empty({N, 1}, opts);
  Tensor a = at::empty({N, P}, opts), term = at::empty({N, C}, opts);
  AT_DISPATCH_FLOATING_TYPES(ctx.scalar_type(), "gc_transform_cpu", [&] {
    transform_forward_impl<scalar_t>(N, C, P, ctx.const_data_ptr<scalar_t>(), w1.const_data_ptr<scalar_t>(),
                                     b1.const_data_ptr<scalar_t>(), lnw.const_data_ptr<scalar_t>(),
                                     lnb.const_data_ptr<scalar_t>(), static_cast<scalar_t>(eps),
                                     w2.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(),
                                     h.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<scalar_t>(),
                                     rstd.mutable_data_ptr<scalar_t>(), a.mutable_data_ptr<scalar_t>(),
                                     term.mutable_data_ptr<scalar_t>());
  });
  return {h, mean, rstd, a, term};
}

Tensor_8 transform_backward(const Tensor& gt, const Tensor& ctx, const Tensor& h, const Tensor& mean,
                            const Tensor& rstd, const Tensor& a, const Tensor& w1, const Tensor& lnw,
                            const Tensor& /*lnb: not needed*/, const Tensor& w2) {
  const int64_t N = ctx.size(0), C = ctx.size(1), P = w1.size(0);
  const auto opts = ctx.options();
  // (Separate tensors: gradients that shared one storage would alias each other in the parameters' .grad.)
  Tensor g_ctx = at::empty({N, C}, opts), gdot = at::empty({N}, opts), g_w1 = at::empty({P, C}, opts);
  Tensor g_b1 = at::empty({P}, opts), g_lnw = at::empty({P}, opts), g_lnb = at::empty({P}, opts);
  Tensor g_w2 = at::empty({C, P}, opts), g_b2 = at::empty({C}, opts);
  AT_DISPATCH_FLOATING_TYPES(ctx.scalar_type(), "gc_transform_backward_cpu", [&] {
    std::vector<scalar_t> work(3 * P);
    transform_backward_impl<scalar_t>(
        N, C, P, gt.const_data_ptr<scalar_t>(), ctx.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(),
        mean.const_data_ptr<scalar_t>(), rstd.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
        w1.const_data_ptr<scalar_t>(), lnw.const_data_ptr<scalar_t>(), w2.const_data_ptr<scalar_t>(),
        g_ctx.mutable_data_ptr<scalar_t>(), gdot.mutable_data_ptr<scalar_t>(), g_w1.mutable_data_ptr<scalar_t>(),
        g_b1.mutable_data_ptr<scalar_t>(), g_lnw.mutable_data_ptr<scalar_t>(), g_lnb.mutable_data_ptr<scalar_t>(),
        g_w2.mutable_data_ptr<scalar_t>(), g_b2.mutable_data_ptr<scalar_t>(), work.data());
  });
  return {g_ctx, gdot, g_w1, g_b1, g_lnw, g_lnb, g_w2, g_b2};
}
