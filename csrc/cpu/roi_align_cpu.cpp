// RoIAlign on CPU, forward and backward: torchvision.ops.roi_align's sampling rules
// (torchvision/csrc/ops/cpu/roi_align_kernel.cpp) computed by tap tables.
//
// For one RoI, every sample of every output bin reads (forward) or writes (backward) four input
// pixels with bilinear weights: the same 4 * samples * bins (offset, weight) "taps" for each
// channel. They are computed once per RoI (roi_taps) and applied to all channels at once, in
// channels-last memory, so each tap is one contiguous, vectorised run over C (torchvision's backward
// recomputes them for every channel and element). The rounding is torchvision's: the forward sums
// each sample's 4 products, adds the samples in order and divides by the count; the backward adds
// grad * (w / count), which is torchvision's (grad * w) / count when the count is a power of two
// (sampling_ratio 2) and within an ulp of it otherwise.
//
//   forward   parallel over RoIs: each task writes its own RoIs' outputs.
//   backward  parallel over channel blocks: each task owns its channels of grad_input, for every
//             RoI and image, so no two tasks write one element (no races, no atomics) and the
//             sum order is fixed (same result for any thread count).
// Both transpose to [N, H, W, C] / [K, PH, PW, C] and back: the outputs are NCHW-contiguous.
//
// Ops (schemas in this file's TORCH_LIBRARY_FRAGMENT; gcrepro/ops/roi_align.py adds autograd):
//   gcrepro::roi_align(input [N, C, H, W], rois [K, 5] (batch index, x1, y1, x2, y2), spatial_scale,
//                      pooled_height, pooled_width, sampling_ratio, aligned) -> [K, C, PH, PW]
//   gcrepro::roi_align_backward(grad [K, C, PH, PW], rois, spatial_scale, pooled_height,
//                      pooled_width, batch_size, channels, height, width, sampling_ratio, aligned)
//                      -> grad_input [N, C, H, W]
// float32 and float64; input of any strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace gcrepro::cpu::roi_align {
namespace {

using at::Tensor;

// The (offset into one H*W plane, weight) pairs of one RoI, bin-major: bin b's taps are
// [b * per_bin, (b + 1) * per_bin), per_bin = 4 * samples per bin. A sample outside the
// feature map (torchvision: y < -1 or y > H, same for x) gets 4 taps of weight 0.
template <typename T>
struct Taps {
  std::vector<int64_t> offset;
  std::vector<T> weight;  // bilinear weights (without the bin's 1/count)
  int64_t per_bin = 0;
  T count = 1;  // samples per bin (at least 1)
};

template <typename T>
struct Geometry {
  T spatial_scale;
  int64_t pooled_h, pooled_w, sampling_ratio, height, width;
  bool aligned;
};

// One corner pair along an axis: torchvision's bilinear_interpolate clamping.
template <typename T>
inline void axis_corners(T v, int64_t size, int64_t& low, int64_t& high, T& frac) {
  if (v <= 0) v = 0;
  low = static_cast<int64_t>(v);
  if (low >= size - 1) {
    low = high = size - 1;
    v = static_cast<T>(low);
  } else {
    high = low + 1;
  }
  frac = v - static_cast<T>(low);
}

template <typename T>
void roi_taps(const T* roi, const Geometry<T>& g, Taps<T>& taps) {
  const T offset = g.aligned ? T(0.5) : T(0);
  const T start_w = roi[1] * g.spatial_scale - offset;
  const T start_h = roi[2] * g.spatial_scale - offset;
  T roi_w = roi[3] * g.spatial_scale - offset - start_w;
  T roi_h = roi[4] * g.spatial_scale - offset - start_h;
  if (!g.aligned) {  // torchvision: unaligned RoIs are at least one feature pixel
    roi_w = std::max(roi_w, T(1));
    roi_h = std::max(roi_h, T(1));
  }
  const T bin_h = roi_h / static_cast<T>(g.pooled_h);
  const T bin_w = roi_w / static_cast<T>(g.pooled_w);
  // adaptive (sampling_ratio <= 0): ceil(bin size) samples; a negative size (aligned) samples nothing
  const int64_t grid_h = std::max<int64_t>(
      g.sampling_ratio > 0 ? g.sampling_ratio : static_cast<int64_t>(std::ceil(roi_h / g.pooled_h)), 0);
  const int64_t grid_w = std::max<int64_t>(
      g.sampling_ratio > 0 ? g.sampling_ratio : static_cast<int64_t>(std::ceil(roi_w / g.pooled_w)), 0);
  taps.count = static_cast<T>(std::max<int64_t>(grid_h * grid_w, 1));
  taps.per_bin = 4 * grid_h * grid_w;
  const int64_t total = taps.per_bin * g.pooled_h * g.pooled_w;
  taps.offset.resize(total);
  taps.weight.resize(total);
  int64_t* off = taps.offset.data();
  T* w = taps.weight.data();
  for (int64_t ph = 0; ph < g.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < g.pooled_w; ++pw) {
      for (int64_t iy = 0; iy < grid_h; ++iy) {
        const T y = start_h + ph * bin_h + (iy + T(0.5)) * bin_h / static_cast<T>(grid_h);
        for (int64_t ix = 0; ix < grid_w; ++ix, off += 4, w += 4) {
          const T x = start_w + pw * bin_w + (ix + T(0.5)) * bin_w / static_cast<T>(grid_w);
          if (y < T(-1) || y > static_cast<T>(g.height) || x < T(-1) || x > static_cast<T>(g.width)) {
            std::fill(off, off + 4, int64_t(0));
            std::fill(w, w + 4, T(0));
            continue;
          }
          int64_t y0, y1, x0, x1;
          T ly, lx;
          axis_corners(y, g.height, y0, y1, ly);
          axis_corners(x, g.width, x0, x1, lx);
          const T hy = T(1) - ly, hx = T(1) - lx;
          off[0] = y0 * g.width + x0;
          off[1] = y0 * g.width + x1;
          off[2] = y1 * g.width + x0;
          off[3] = y1 * g.width + x1;
          w[0] = hy * hx;
          w[1] = hy * lx;
          w[2] = ly * hx;
          w[3] = ly * lx;
        }
      }
    }
  }
}

template <typename T>
Geometry<T> geometry(double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                     int64_t height, int64_t width, bool aligned) {
  return {static_cast<T>(spatial_scale), pooled_h, pooled_w, sampling_ratio, height, width, aligned};
}

void check_args(const Tensor& rois, const Tensor& features, int64_t batch, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "gcrepro::roi_align: rois must have shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == features.scalar_type(), "gcrepro::roi_align: rois are ", rois.scalar_type(),
              " but the features are ", features.scalar_type(), " (expected the same dtype)");
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "gcrepro::roi_align: output size must be positive, got (", pooled_h,
              ", ", pooled_w, ")");
  if (rois.numel() == 0) return;
  const Tensor idx = rois.select(1, 0);
  const double lo = idx.min().item<double>(), hi = idx.max().item<double>();
  TORCH_CHECK(lo >= 0 && hi < static_cast<double>(batch), "gcrepro::roi_align: rois[:, 0] (batch index) must lie in [0, ",
              batch, "), got values in [", lo, ", ", hi, "]");
}

// dst[0, n) += w * src[0, n): one tap on a run of channels (vectorised by the compiler)
template <typename T>
inline void axpy(T* __restrict dst, const T* __restrict src, T w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += w * src[i];
}

// dst[0, n) += one bilinear sample of 4 taps, summed in torchvision's order
template <typename T>
inline void add_sample(T* __restrict dst, const T* __restrict base, const int64_t* off, const T* w, int64_t n) {
  const T* __restrict s0 = base + off[0] * n;
  const T* __restrict s1 = base + off[1] * n;
  const T* __restrict s2 = base + off[2] * n;
  const T* __restrict s3 = base + off[3] * n;
  for (int64_t i = 0; i < n; ++i) dst[i] += w[0] * s0[i] + w[1] * s1[i] + w[2] * s2[i] + w[3] * s3[i];
}

Tensor forward(const Tensor& input_, const Tensor& rois_, double spatial_scale, int64_t pooled_h, int64_t pooled_w,
               int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input_.dim() == 4, "gcrepro::roi_align: input must be [N, C, H, W], got ", input_.sizes());
  check_args(rois_, input_, input_.size(0), pooled_h, pooled_w);
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);  // [N, H, W, C] in memory
  const Tensor rois = rois_.contiguous();
  const int64_t k = rois.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  Tensor out = at::zeros({k, pooled_h, pooled_w, c}, input.options());  // [K, PH, PW, C]
  if (k == 0 || c == 0 || h * w == 0) return out.permute({0, 3, 1, 2}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gcrepro_roi_align", [&] {
    const auto g = geometry<scalar_t>(spatial_scale, pooled_h, pooled_w, sampling_ratio, h, w, aligned);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* r = rois.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t bins = pooled_h * pooled_w, image = h * w * c;
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      Taps<scalar_t> taps;
      for (int64_t n = begin; n < end; ++n) {
        roi_taps(r + n * 5, g, taps);
        const scalar_t* src = in + static_cast<int64_t>(r[n * 5]) * image;
        for (int64_t bin = 0; bin < bins; ++bin) {
          scalar_t* dst = o + (n * bins + bin) * c;
          for (int64_t t = bin * taps.per_bin; t < (bin + 1) * taps.per_bin; t += 4) {
            const scalar_t* w4 = taps.weight.data() + t;
            if (w4[0] != 0 || w4[1] != 0 || w4[2] != 0 || w4[3] != 0) add_sample(dst, src, taps.offset.data() + t, w4, c);
          }
          for (int64_t i = 0; i < c; ++i) dst[i] /= taps.count;
        }
      }
    });
  });
  return out.permute({0, 3, 1, 2}).contiguous();  // [K, C, PH, PW]
}

Tensor backward(const Tensor& grad_, const Tensor& rois_, double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(grad_.dim() == 4 && grad_.size(1) == channels && grad_.size(2) == pooled_h && grad_.size(3) == pooled_w,
              "gcrepro::roi_align_backward: grad must be [K, ", channels, ", ", pooled_h, ", ", pooled_w, "], got ",
              grad_.sizes());
  check_args(rois_, grad_, batch, pooled_h, pooled_w);
  TORCH_CHECK(grad_.size(0) == rois_.size(0), "gcrepro::roi_align_backward: grad has ", grad_.size(0),
              " RoIs but rois has ", rois_.size(0));
  const Tensor grad = grad_.permute({0, 2, 3, 1}).contiguous();  // [K, PH, PW, C]
  const Tensor rois = rois_.contiguous();
  Tensor grad_input = at::zeros({batch, height, width, channels}, grad.options());  // [N, H, W, C]
  const int64_t k = rois.size(0);
  if (k > 0 && channels > 0 && height * width > 0) {
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "gcrepro_roi_align_backward", [&] {
      const auto g = geometry<scalar_t>(spatial_scale, pooled_h, pooled_w, sampling_ratio, height, width, aligned);
      const scalar_t* go = grad.const_data_ptr<scalar_t>();
      const scalar_t* r = rois.const_data_ptr<scalar_t>();
      scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
      const int64_t bins = pooled_h * pooled_w, image = height * width * channels;
      // each task owns channels [c_begin, c_end) of every pixel; blocks of at least 16 channels,
      // as each task computes every RoI's taps
      at::parallel_for(0, channels, 16, [&](int64_t c_begin, int64_t c_end) {
        Taps<scalar_t> taps;
        const int64_t run = c_end - c_begin;
        for (int64_t n = 0; n < k; ++n) {
          roi_taps(r + n * 5, g, taps);
          scalar_t* dst = gi + static_cast<int64_t>(r[n * 5]) * image + c_begin;
          for (int64_t bin = 0; bin < bins; ++bin) {
            const scalar_t* src = go + (n * bins + bin) * channels + c_begin;
            for (int64_t t = bin * taps.per_bin; t < (bin + 1) * taps.per_bin; ++t) {
              const scalar_t wt = taps.weight[t] / taps.count;
              if (wt != scalar_t(0)) axpy(dst + taps.offset[t] * channels, src, wt, run);
            }
          }
        }
      });
    });
  }
  return grad_input.permute({0, 3, 1, 2}).contiguous();  // [N, C, H, W]
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gcrepro, m) {
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
        "int sampling_ratio, bool aligned) -> Tensor");
  m.def("roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
        "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) -> Tensor");
}

TORCH_LIBRARY_IMPL(gcrepro, CPU, m) {
  m.impl("roi_align", &forward);
  m.impl("roi_align_backward", &backward);
}

}  // namespace gcrepro::cpu::roi_align
