// fp32 vectors for the kernels' streaming stores (stream_store.h), in the width of the
// including translation unit's ISA: 8 floats (AVX) in kernels_avx2.cpp, 4 (SSE2) in the x86-64
// baseline, 1 (a plain store) elsewhere.
// (no include guard: included once per ISA translation unit, inside its namespace, like
// context_kernels.h; the intrinsics headers come from kernels_includes.h)

namespace stream_vec {
#if defined(GCREPRO_AVX2_BUILT)
using vec = __m256;
constexpr int64_t kFloats = 8;
inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline vec set1(float v) { return _mm256_set1_ps(v); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
// max(0, v) returns its second operand for NaN: keeps NaN, like torch.relu.
inline vec relu(vec v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }
inline void stream(float* p, vec v) { _mm256_stream_ps(p, v); }  // p 32-byte aligned
#elif defined(GCREPRO_HAVE_STREAM_STORES)
using vec = __m128;
constexpr int64_t kFloats = 4;
inline vec load(const float* p) { return _mm_loadu_ps(p); }
inline vec set1(float v) { return _mm_set1_ps(v); }
inline vec add(vec a, vec b) { return _mm_add_ps(a, b); }
inline vec relu(vec v) { return _mm_max_ps(_mm_setzero_ps(), v); }
inline void stream(float* p, vec v) { _mm_stream_ps(p, v); }  // p 16-byte aligned
#else
using vec = float;
constexpr int64_t kFloats = 1;
inline vec load(const float* p) { return *p; }
inline vec set1(float v) { return v; }
inline vec add(vec a, vec b) { return a + b; }
inline vec relu(vec v) { return v < 0.f ? 0.f : v; }
inline void stream(float* p, vec v) { *p = v; }
#endif
constexpr int64_t kBytes = kFloats * static_cast<int64_t>(sizeof(float));
}  // namespace stream_vec
