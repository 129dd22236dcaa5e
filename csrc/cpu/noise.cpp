// CPU kernels and Python bindings of the NTGAN noisy/clean batch (fastgan/ops/noise.py), plus the raw
// Philox stream for the exactness tests. Noise math: fastgan/philox.h (shared with csrc/cuda/noise.cu).
#include <pybind11/pybind11.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <string>
#include <type_traits>
#include <vector>

#include "fastgan/half_cpu.h"
#include "fastgan/noise_args.h"
#include "fastgan/philox.h"
#include "fastgan/binding_utils.h"
#include "fastgan/registry.h"
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#include "fastgan/cuda_api_noise.h"
#endif

namespace py = pybind11;
using namespace pybind11::literals;

namespace fastgan {
namespace {

constexpr int64_t kParallelWork = 1 << 15;

// f(i) for i in [0, n), across OpenMP threads when `parallel`. A `parallel for if (false)` still enters the
// OpenMP runtime (~0.25 us a region, as much as the kernels at the 2-d mixture's sizes); this does not.
template <typename Fn>
inline void for_each(int64_t n, bool parallel, const Fn& f) {
  if (parallel) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) f(i);
  } else {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
}

struct Layout {
  int64_t n_clean, n_noisy, src0, dst0;
};

Layout layout(int64_t m, bool half) {
  if (half) return {m / 2, m - m / 2, m / 2, m / 2};
  return {m, m, 0, m};
}

// ---------------------------------------------------------------- batched draw
// The same stream as philox::normals4 (fastgan/philox.h, also used by CUDA), computed kBatch counters at a
// time in structure-of-arrays loops without branches, so the compiler vectorizes Philox (32x32->64 multiplies)
// and Box-Muller (libm's logf/sinf/cosf are scalar calls). log and sin/cos are evaluated in double and rounded
// once to float, so they are (almost always) the correctly rounded floats, as glibc's are to within its last-bit
// errors; the float operations around them (2*pi*u, -2*log, sqrt, r*cos) are the ones of philox.h, in its order.
// The Philox words are bit-identical; measured, 98.5% of the normals equal philox::normals4's with glibc, the
// rest differ by one ulp (the CPU/CUDA/Triton/reference tests allow 4e-6).
constexpr int kBatch = 16;                           // counters per batch
constexpr int kBatchN = kBatch * philox::kPerCounter;  // normals per batch
constexpr int kPairs = kBatchN / 2;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FG_X86_DISPATCH 1
// avx512f: 8-wide doubles for Box-Muller (~20% faster a draw than avx2). AVX-512F has FMA instructions, and
// GCC would contract a * b + c into them, changing the rounding: fp-contract=off keeps every clone's results
// identical to the others' (avx2 does not enable FMA).
#define FG_DRAW_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#else
#define FG_DRAW_CLONES
#endif

// words w[k * kBatch + j] = word k of counter c0 + j
void words_portable(uint64_t seed, uint64_t c0, uint32_t* w) {
  const uint32_t key0 = uint32_t(seed), key1 = uint32_t(seed >> 32);
  // one lane per counter, the ten rounds unrolled: the loop over lanes is what the compiler vectorizes
  for (int j = 0; j < kBatch; ++j) {
    const uint64_t c = c0 + uint64_t(j);
    uint32_t x0 = uint32_t(c), x1 = uint32_t(c >> 32), x2 = 0u, x3 = 0u;
    uint32_t k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int r = 0; r < philox::kRounds; ++r) {
      const uint64_t pa = uint64_t(philox::kMulA) * x0;
      const uint64_t pb = uint64_t(philox::kMulB) * x2;
      x0 = uint32_t(pb >> 32) ^ x1 ^ k0;
      x2 = uint32_t(pa >> 32) ^ x3 ^ k1;
      x1 = uint32_t(pb);
      x3 = uint32_t(pa);
      k0 += philox::kBumpA;
      k1 += philox::kBumpB;
    }
    w[j] = x0;
    w[kBatch + j] = x1;
    w[2 * kBatch + j] = x2;
    w[3 * kBatch + j] = x3;
  }
}

#ifdef FG_X86_DISPATCH
// 8 counters per vector; the 32x32->64 products of even and odd lanes are split into hi/lo words with blends
// (GCC's own vectorization of words_portable is about 2.5x slower)
__attribute__((target("avx2"))) inline void mul_hilo(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

__attribute__((target("avx2"))) void words_avx2(uint64_t seed, uint64_t c0, uint32_t* w) {
  static_assert(kBatch == 16, "two vectors of 8 counters");
  const __m256i ma = _mm256_set1_epi32(int(philox::kMulA)), mb = _mm256_set1_epi32(int(philox::kMulB));
  __m256i x0[2], x1[2], x2[2], x3[2];
  for (int v = 0; v < 2; ++v) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int j = 0; j < 8; ++j) {
      const uint64_t c = c0 + uint64_t(v * 8 + j);
      lo[j] = uint32_t(c);
      hi[j] = uint32_t(c >> 32);
    }
    x0[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    x1[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    x2[v] = _mm256_setzero_si256();
    x3[v] = _mm256_setzero_si256();
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < philox::kRounds; ++r) {
    const __m256i vk0 = _mm256_set1_epi32(int(k0)), vk1 = _mm256_set1_epi32(int(k1));
    for (int v = 0; v < 2; ++v) {
      __m256i ha, la, hb, lb;
      mul_hilo(x0[v], ma, &ha, &la);
      mul_hilo(x2[v], mb, &hb, &lb);
      x0[v] = _mm256_xor_si256(_mm256_xor_si256(hb, x1[v]), vk0);
      x2[v] = _mm256_xor_si256(_mm256_xor_si256(ha, x3[v]), vk1);
      x1[v] = lb;
      x3[v] = la;
    }
    k0 += philox::kBumpA;
    k1 += philox::kBumpB;
  }
  for (int v = 0; v < 2; ++v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + v * 8), x0[v]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + kBatch + v * 8), x1[v]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + 2 * kBatch + v * 8), x2[v]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + 3 * kBatch + v * 8), x3[v]);
  }
}

// The same with the 16 counters in one vector. (GCC 12's AVX-512 intrinsics trip -Wuninitialized inside its
// own headers, on their _mm512_undefined_epi32() pass-through operand.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) inline void mul_hilo512(__m512i a, __m512i m, __m512i* hi, __m512i* lo) {
  const __m512i pe = _mm512_mul_epu32(a, m);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  *lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}

__attribute__((target("avx512f"))) void words_avx512(uint64_t seed, uint64_t c0, uint32_t* w) {
  static_assert(kBatch == 16, "one vector of 16 counters");
  const __m512i ma = _mm512_set1_epi32(int(philox::kMulA)), mb = _mm512_set1_epi32(int(philox::kMulB));
  alignas(64) uint32_t lo[16], hi[16];
  for (int j = 0; j < 16; ++j) {
    const uint64_t c = c0 + uint64_t(j);
    lo[j] = uint32_t(c);
    hi[j] = uint32_t(c >> 32);
  }
  __m512i x0 = _mm512_load_si512(lo), x1 = _mm512_load_si512(hi);
  __m512i x2 = _mm512_setzero_si512(), x3 = _mm512_setzero_si512();
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < philox::kRounds; ++r) {
    __m512i ha, la, hb, lb;
    mul_hilo512(x0, ma, &ha, &la);
    mul_hilo512(x2, mb, &hb, &lb);
    x0 = _mm512_ternarylogic_epi32(hb, x1, _mm512_set1_epi32(int(k0)), 0x96);  // three-way xor
    x2 = _mm512_ternarylogic_epi32(ha, x3, _mm512_set1_epi32(int(k1)), 0x96);
    x1 = lb;
    x3 = la;
    k0 += philox::kBumpA;
    k1 += philox::kBumpB;
  }
  _mm512_storeu_si512(w, x0);
  _mm512_storeu_si512(w + kBatch, x1);
  _mm512_storeu_si512(w + 2 * kBatch, x2);
  _mm512_storeu_si512(w + 3 * kBatch, x3);
}
#pragma GCC diagnostic pop

const bool kHasAvx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2") != 0);
const bool kHasAvx512 = __builtin_cpu_supports("avx512f") != 0;
#endif

inline void words_batch(uint64_t seed, uint64_t c0, uint32_t* w) {
#ifdef FG_X86_DISPATCH
  if (kHasAvx512) return words_avx512(seed, c0, w);
  if (kHasAvx2) return words_avx2(seed, c0, w);
#endif
  words_portable(seed, c0, w);
}

// The draw's last step: z[4 j + 2 h] = rad[p] * cs[p], z[4 j + 2 h + 1] = rad[p] * sn[p] for p = h * kBatch + j
// (counter j's four normals together). GCC vectorized the scalar loop into 128-bit shuffles, a third of a draw's
// time (perf annotate); the SIMD paths form the same products 16 (8) at a time and interleave them in registers.
void interleave_portable(const float* rad, const float* cs, const float* sn, float* z) {
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < kBatch; ++j) {
      const int p = h * kBatch + j;
      z[4 * j + 2 * h] = rad[p] * cs[p];
      z[4 * j + 2 * h + 1] = rad[p] * sn[p];
    }
  }
}

#ifdef FG_X86_DISPATCH
// per 128-bit lane: unpack_ps pairs (a, b) of h = 0 and of h = 1, unpack_pd joins them into counter j's four
// normals (v0..v3: j = 4k, 4k + 1, 4k + 2, 4k + 3 in lane k), and lane shuffles put the counters in order
__attribute__((target("avx2"))) void interleave_avx2(const float* rad, const float* cs, const float* sn, float* z) {
  for (int j0 = 0; j0 < kBatch; j0 += 8) {
    const __m256 r0 = _mm256_loadu_ps(rad + j0), r1 = _mm256_loadu_ps(rad + kBatch + j0);
    const __m256 a0 = _mm256_mul_ps(r0, _mm256_loadu_ps(cs + j0)), b0 = _mm256_mul_ps(r0, _mm256_loadu_ps(sn + j0));
    const __m256 a1 = _mm256_mul_ps(r1, _mm256_loadu_ps(cs + kBatch + j0));
    const __m256 b1 = _mm256_mul_ps(r1, _mm256_loadu_ps(sn + kBatch + j0));
    const __m256d lo0 = _mm256_castps_pd(_mm256_unpacklo_ps(a0, b0)), hi0 = _mm256_castps_pd(_mm256_unpackhi_ps(a0, b0));
    const __m256d lo1 = _mm256_castps_pd(_mm256_unpacklo_ps(a1, b1)), hi1 = _mm256_castps_pd(_mm256_unpackhi_ps(a1, b1));
    const __m256 v0 = _mm256_castpd_ps(_mm256_unpacklo_pd(lo0, lo1)), v1 = _mm256_castpd_ps(_mm256_unpackhi_pd(lo0, lo1));
    const __m256 v2 = _mm256_castpd_ps(_mm256_unpacklo_pd(hi0, hi1)), v3 = _mm256_castpd_ps(_mm256_unpackhi_pd(hi0, hi1));
    float* o = z + 4 * j0;
    _mm256_storeu_ps(o, _mm256_permute2f128_ps(v0, v1, 0x20));
    _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(v2, v3, 0x20));
    _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(v0, v1, 0x31));
    _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(v2, v3, 0x31));
  }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) void interleave_avx512(const float* rad, const float* cs, const float* sn,
                                                         float* z) {
  static_assert(kBatch == 16, "one vector of 16 counters");
  const __m512 r0 = _mm512_loadu_ps(rad), r1 = _mm512_loadu_ps(rad + kBatch);
  const __m512 a0 = _mm512_mul_ps(r0, _mm512_loadu_ps(cs)), b0 = _mm512_mul_ps(r0, _mm512_loadu_ps(sn));
  const __m512 a1 = _mm512_mul_ps(r1, _mm512_loadu_ps(cs + kBatch)), b1 = _mm512_mul_ps(r1, _mm512_loadu_ps(sn + kBatch));
  const __m512d lo0 = _mm512_castps_pd(_mm512_unpacklo_ps(a0, b0)), hi0 = _mm512_castps_pd(_mm512_unpackhi_ps(a0, b0));
  const __m512d lo1 = _mm512_castps_pd(_mm512_unpacklo_ps(a1, b1)), hi1 = _mm512_castps_pd(_mm512_unpackhi_ps(a1, b1));
  const __m512 v0 = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1)), v1 = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
  const __m512 v2 = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1)), v3 = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
  const __m512 t0 = _mm512_shuffle_f32x4(v0, v1, 0x44), t1 = _mm512_shuffle_f32x4(v2, v3, 0x44);
  const __m512 t2 = _mm512_shuffle_f32x4(v0, v1, 0xEE), t3 = _mm512_shuffle_f32x4(v2, v3, 0xEE);
  _mm512_storeu_ps(z, _mm512_shuffle_f32x4(t0, t1, 0x88));
  _mm512_storeu_ps(z + 16, _mm512_shuffle_f32x4(t0, t1, 0xDD));
  _mm512_storeu_ps(z + 32, _mm512_shuffle_f32x4(t2, t3, 0x88));
  _mm512_storeu_ps(z + 48, _mm512_shuffle_f32x4(t2, t3, 0xDD));
}
#pragma GCC diagnostic pop
#endif

inline void interleave(const float* rad, const float* cs, const float* sn, float* z) {
#ifdef FG_X86_DISPATCH
  if (kHasAvx512) return interleave_avx512(rad, cs, sn, z);
  if (kHasAvx2) return interleave_avx2(rad, cs, sn, z);
#endif
  interleave_portable(rad, cs, sn, z);
}

// philox::to_uniform without the branch: ~i == i ^ -1 for negative i
inline float uniform31(uint32_t x) {
  int32_t i = int32_t(x);
  i ^= i >> 31;
  return float(i) * 4.6566127342e-10f;
}

// z[4 * j + k] = normal k of counter c0 + j
FG_DRAW_CLONES void normals_batch(uint64_t seed, uint64_t c0, float* z) {
  uint32_t w[kBatchN];
  words_batch(seed, c0, w);
  // pair p = h * kBatch + j uses words (2h, 2h + 1) of counter j
  float ua[kPairs], ub[kPairs], v[kPairs], rad[kPairs], cs[kPairs], sn[kPairs];
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < kBatch; ++j) {
      const float u = uniform31(w[(2 * h) * kBatch + j]);
      ua[h * kBatch + j] = u > 1.0e-7f ? u : 1.0e-7f;  // log(0) guard, as philox::box_muller
      ub[h * kBatch + j] = uniform31(w[(2 * h + 1) * kBatch + j]);
    }
  }
  for (int p = 0; p < kPairs; ++p) {
    const float u1 = ua[p];
    const float th = 6.283185307179586f * ub[p];
    // log(u1), u1 = m * 2^e with m in [sqrt(1/2), sqrt(2)): log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172
    int32_t bits;
    std::memcpy(&bits, &u1, 4);
    int32_t mb = (bits & 0x007FFFFF) | 0x3F800000;
    const int32_t big = 1 + ((mb - 0x3FB504F4) >> 31);  // m > sqrt(2): halve it
    mb -= big << 23;
    const int32_t e = (bits >> 23) - 127 + big;
    float mf;
    std::memcpy(&mf, &mb, 4);
    const double md = double(mf);
    const double s = (md - 1.0) / (md + 1.0), s2 = s * s;
    const double poly = 1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11 + s2 * (1.0 / 13 + s2 * (1.0 / 15)))))));
    const double lg = double(e) * 0.6931471805599453094 + 2.0 * s * poly;
    v[p] = -2.0f * float(lg);
    // sin/cos of th in [0, 2 pi): quadrant q = round(th / (pi / 2)), reduced by pi/2 in two parts (exact product)
    const double t = double(th);
    const int32_t qi = int32_t(t * 0.63661977236758134308 + 0.5);
    const double q = double(qi);
    const double x = (t - q * 1.5707963267341256) - q * 6.0771005065061922e-11;
    const double x2 = x * x;
    const double sx = x + x * x2 * (-1.0 / 6 + x2 * (1.0 / 120 + x2 * (-1.0 / 5040 + x2 * (1.0 / 362880 + x2 * (-1.0 / 39916800 + x2 * (1.0 / 6227020800.0))))));
    const double cx = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24 + x2 * (-1.0 / 720 + x2 * (1.0 / 40320 + x2 * (-1.0 / 3628800 + x2 * (1.0 / 479001600 + x2 * (-1.0 / 87178291200.0)))))));
    // q mod 4 = 0: (c, s); 1: (-s, c); 2: (-c, -s); 3: (s, -c); selected by exact multiplies by 0 and +-1
    const double odd = double(qi & 1), even = 1.0 - odd;
    const double sc = 1.0 - 2.0 * double((qi ^ (qi >> 1)) & 1), ss = 1.0 - 2.0 * double((qi >> 1) & 1);
    cs[p] = float(sc * (cx * even + sx * odd));
    sn[p] = float(ss * (sx * even + cx * odd));
  }
#if defined(__SSE2__)
  for (int p = 0; p < kPairs; p += 4) _mm_storeu_ps(rad + p, _mm_sqrt_ps(_mm_loadu_ps(v + p)));  // sqrtf, no errno
#else
  for (int p = 0; p < kPairs; ++p) rad[p] = sqrtf(v[p]);
#endif
  interleave(rad, cs, sn, z);
}

// z[e - e0] for stream elements e in [e0, e1) of the draw at (seed, off)
inline void draw_range(uint64_t seed, uint64_t off, int64_t e0, int64_t e1, float* z) {
  float buf[kBatchN];
  int64_t e = e0;
  while (e < e1) {
    const int64_t g = e / philox::kPerCounter;
    const int64_t first = g * philox::kPerCounter;
    const int64_t stop = std::min<int64_t>(e1, first + kBatchN);
    if (e == first && stop - first == kBatchN) {
      normals_batch(seed, off + uint64_t(g), z + (e - e0));
    } else {
      normals_batch(seed, off + uint64_t(g), buf);
      for (int64_t k = e; k < stop; ++k) z[k - e0] = buf[k - first];
    }
    e = stop;
  }
}

// noisy rows [e0, e0 + n) of one side (element e = i * F + f of the noisy block), clean copy in double mode
template <typename T, typename A>
void apply_side(const T* x, int64_t sb, int64_t sf, T* out, const Layout& L, int64_t F, int64_t e0, int64_t n,
                const A* ev, bool copy_clean) {
  T* noisy = out + L.dst0 * F + e0;
  if (sf == 1 && sb == F) {
    const T* src = x + L.src0 * F + e0;
    for (int64_t k = 0; k < n; ++k) noisy[k] = Storage<T>::store(double(A(Storage<T>::load(src[k])) + ev[k]));
    if (copy_clean) std::memcpy(out + e0, src, size_t(n) * sizeof(T));
    return;
  }
  int64_t i = e0 / F, f = e0 - i * F;
  for (int64_t k = 0; k < n; ++k) {
    const T v = x[(L.src0 + i) * sb + f * sf];
    noisy[k] = Storage<T>::store(double(A(Storage<T>::load(v)) + ev[k]));
    if (copy_clean) out[e0 + k] = v;
    if (++f == F) {
      f = 0;
      ++i;
    }
  }
}

// z_out (CPU only, optional): the draw's standard normals (n_noisy * F floats), kept for the backward's dsigma
// so it need not draw them again (the draw is compute-bound on the CPU)
template <typename T, typename A>
void noisy_forward(const NoisyForwardArgs& a, float* z_out) {
  const T* xr = cptr<T>(a.x_real);
  const T* xf = cptr<T>(a.x_fake);
  const T* eps = cptr<T>(a.eps);
  const A* sig = cptr<A>(a.sigma);
  T* outr = mptr<T>(a.out_real);
  T* outf = mptr<T>(a.out_fake);
  const int64_t F = a.F, C = a.C, inner = F / C;
  const Layout L = layout(a.m, a.half);
  const int64_t N = L.n_noisy * F, G = philox::counters_for(N);
  int64_t* rng = mptr<int64_t>(a.rng);
  uint64_t seed = 0, off = 0;
  if (eps == nullptr) {
    seed = uint64_t(rng[0]);
    off = uint64_t(rng[1]);
    if (a.advance && a.used != 0) {  // optional here: a backward that keeps z or needs no noise reads none
      int64_t* used = mptr<int64_t>(a.used);
      used[0] = rng[0];
      used[1] = rng[1];
    }
  }
  const A sigma_value = A(a.sigma_value);
  const bool copy_clean = !a.half;
  const int64_t blocks = (N + kBatchN - 1) / kBatchN;
  for_each(blocks, N > kParallelWork, [&](int64_t b) {
    const int64_t e0 = b * kBatchN, n = std::min<int64_t>(kBatchN, N - e0);
    A ev[kBatchN];
    if (eps == nullptr) {
      float z[kBatchN];
      normals_batch(seed, off + uint64_t(b * kBatch), z);
      if (z_out != nullptr) std::memcpy(z_out + e0, z, size_t(n) * sizeof(float));
      if (sig == nullptr || C == 1) {
        const A s = sig != nullptr ? sig[0] : sigma_value;
        for (int64_t k = 0; k < n; ++k) ev[k] = s * A(z[k]);
      } else {
        int64_t f = e0 % F;
        for (int64_t k = 0; k < n; ++k) {
          ev[k] = sig[f / inner] * A(z[k]);
          if (++f == F) f = 0;
        }
      }
    } else if (a.se_f == 1 && a.se_b == F) {
      for (int64_t k = 0; k < n; ++k) ev[k] = A(Storage<T>::load(eps[e0 + k]));
    } else {
      int64_t i = e0 / F, f = e0 - i * F;
      for (int64_t k = 0; k < n; ++k) {
        ev[k] = A(Storage<T>::load(eps[i * a.se_b + f * a.se_f]));
        if (++f == F) {
          f = 0;
          ++i;
        }
      }
    }
    if (xr != nullptr) apply_side<T, A>(xr, a.sr_b, a.sr_f, outr, L, F, e0, n, ev, copy_clean);
    if (xf != nullptr) apply_side<T, A>(xf, a.sf_b, a.sf_f, outf, L, F, e0, n, ev, copy_clean);
  });
  if (a.half) {
    for_each(L.n_clean, L.n_clean * F > kParallelWork, [&](int64_t i) {
      for (int64_t f = 0; f < F; ++f) {
        if (xr != nullptr) outr[i * F + f] = xr[i * a.sr_b + f * a.sr_f];
        if (xf != nullptr) outf[i * F + f] = xf[i * a.sf_b + f * a.sf_f];
      }
    });
  }
  if (eps == nullptr && a.advance) rng[1] = int64_t(off + uint64_t(G));
}

// g[(row0 + e / F) * sb + (e % F) * sf] for e in [e0, e0 + n), in the accumulation dtype (zeros if absent)
template <typename T, typename A>
void load_rows(const T* g, int64_t sb, int64_t sf, int64_t row0, int64_t F, int64_t e0, int64_t n, A* v) {
  if (g == nullptr) {
    for (int64_t k = 0; k < n; ++k) v[k] = A(0);
  } else if (sf == 1 && sb == F) {
    const T* src = g + row0 * F + e0;
    for (int64_t k = 0; k < n; ++k) v[k] = A(Storage<T>::load(src[k]));
  } else if (sf == 0 && sb == 0) {
    // broadcast upstream gradient (the backward of .sum()): one value
    const A c = A(Storage<T>::load(g[0]));
    for (int64_t k = 0; k < n; ++k) v[k] = c;
  } else {
    // row by row, the inner loop without index arithmetic when rows are contiguous
    int64_t i = e0 / F, f = e0 - i * F, k = 0;
    while (k < n) {
      const int64_t len = std::min(F - f, n - k);
      const T* row = g + (row0 + i) * sb;
      if (sf == 1) {
        for (int64_t t = 0; t < len; ++t) v[k + t] = A(Storage<T>::load(row[f + t]));
      } else {
        for (int64_t t = 0; t < len; ++t) v[k + t] = A(Storage<T>::load(row[(f + t) * sf]));
      }
      k += len;
      f = 0;
      ++i;
    }
  }
}

constexpr int64_t kBackBlock = 256;  // elements per step of the backward (a multiple of kBatchN)

// z_in (optional): the normals noisy_forward saved in z_out; else they are drawn again from a.rng.
// total: dsigma gets sigma's C gradients, the per-row partials summed here in double in row order (the same
// bits for any thread count), instead of the n_noisy x C partials a caller reduces (a tensor and a torch sum
// that cost the eager learned-sigma call more than this kernel at the 2-d mixture's sizes)
template <typename T, typename A>
void noisy_backward(const NoisyBackwardArgs& a, const float* z_in, bool total) {
  const T* gr = cptr<T>(a.g_real);
  const T* gf = cptr<T>(a.g_fake);
  T* dxr = mptr<T>(a.dx_real);
  T* dxf = mptr<T>(a.dx_fake);
  T* deps = mptr<T>(a.deps);
  A* dsig = mptr<A>(a.dsigma);
  const int64_t F = a.F, C = a.C, inner = F / C;
  const Layout L = layout(a.m, a.half);
  uint64_t seed = 0, off = 0;
  if (dsig != nullptr) {
    const int64_t* rng = cptr<int64_t>(a.rng);
    seed = uint64_t(rng[0]);
    off = uint64_t(rng[1]);
  }
  const int64_t planes = L.n_noisy * C;
  std::vector<double> partials(dsig != nullptr && total ? planes : 0);
  double* part = partials.empty() ? nullptr : partials.data();
  // chunks of whole planes (p = i * C + c covers elements [p * inner, (p + 1) * inner)), so each dsigma
  // partial is summed by one thread in element order
  const int64_t per_chunk = std::max<int64_t>(1, (4 * kBackBlock) / inner);
  const int64_t chunks = (planes + per_chunk - 1) / per_chunk;
  const bool want_dx = !a.half && (dxr != nullptr || dxf != nullptr);
  for_each(chunks, L.n_noisy * F > kParallelWork, [&](int64_t ch) {
    const int64_t p0 = ch * per_chunk, p1 = std::min(planes, p0 + per_chunk);
    const int64_t E1 = p1 * inner;
    int64_t plane = p0, left = inner;
    double acc = 0.0;
    for (int64_t e0 = p0 * inner; e0 < E1; e0 += kBackBlock) {
      const int64_t n = std::min(kBackBlock, E1 - e0);
      A vr[kBackBlock], vf[kBackBlock];
      load_rows<T, A>(gr, a.gr_b, a.gr_f, L.dst0, F, e0, n, vr);
      load_rows<T, A>(gf, a.gf_b, a.gf_f, L.dst0, F, e0, n, vf);
      if (deps != nullptr)
        for (int64_t k = 0; k < n; ++k) deps[e0 + k] = Storage<T>::store(double(vr[k] + vf[k]));
      if (want_dx) {
        // clean row i and noisy row m + i both came from x[i]
        A vc[kBackBlock];
        if (dxr != nullptr) {
          load_rows<T, A>(gr, a.gr_b, a.gr_f, 0, F, e0, n, vc);
          for (int64_t k = 0; k < n; ++k) dxr[e0 + k] = Storage<T>::store(double(vc[k] + vr[k]));
        }
        if (dxf != nullptr) {
          load_rows<T, A>(gf, a.gf_b, a.gf_f, 0, F, e0, n, vc);
          for (int64_t k = 0; k < n; ++k) dxf[e0 + k] = Storage<T>::store(double(vc[k] + vf[k]));
        }
      }
      if (dsig != nullptr) {
        float zbuf[kBackBlock];
        const float* z = zbuf;
        if (z_in != nullptr)
          z = z_in + e0;
        else
          draw_range(seed, off, e0, e0 + n, zbuf);
        for (int64_t k = 0; k < n; ++k) {
          acc += double(vr[k] + vf[k]) * double(z[k]);
          if (--left == 0) {
            if (part != nullptr)
              part[plane++] = acc;
            else
              dsig[plane++] = A(acc);
            acc = 0.0;
            left = inner;
          }
        }
      }
    }
  });
  if (part != nullptr) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0.0;
      for (int64_t i = 0; i < L.n_noisy; ++i) s += part[i * C + c];
      dsig[c] = A(s);
    }
  }
}

template <template <typename, typename> class Fn, typename Args, typename... Z>
void dispatch(int dtype, const Args& a, const char* what, Z... z) {
  switch (dtype) {
    case kFloat32: return Fn<float, float>::run(a, z...);
    case kFloat64: return Fn<double, double>::run(a, z...);
    case kFloat16: return Fn<half_t, float>::run(a, z...);
    case kBFloat16: return Fn<bf16_t, float>::run(a, z...);
  }
  throw std::invalid_argument(std::string(what) + ": unsupported dtype code " + std::to_string(dtype));
}

template <typename T, typename A>
struct Forward { static void run(const NoisyForwardArgs& a, float* z) { noisy_forward<T, A>(a, z); } };
template <typename T, typename A>
struct Backward {
  static void run(const NoisyBackwardArgs& a, const float* z, bool total) { noisy_backward<T, A>(a, z, total); }
};

void check_forward(const NoisyForwardArgs& a) {
  if (a.m <= 0 || a.F <= 0 || a.C <= 0 || a.F % a.C != 0) throw std::invalid_argument("noisy_forward: bad sizes");
  if (a.x_real == 0 && a.x_fake == 0) throw std::invalid_argument("noisy_forward: no input batch");
  if (a.eps == 0 && a.rng == 0) throw std::invalid_argument("noisy_forward: Gaussian noise needs a state");
}

void check_backward(const NoisyBackwardArgs& a) {
  if (a.m <= 0 || a.F <= 0 || a.C <= 0 || a.F % a.C != 0) throw std::invalid_argument("noisy_backward: bad sizes");
  if (a.dsigma != 0 && a.rng == 0) throw std::invalid_argument("noisy_backward: dsigma needs the draw's state");
  if ((a.dx_real != 0 && a.g_real == 0) || (a.dx_fake != 0 && a.g_fake == 0))
    throw std::invalid_argument("noisy_backward: dx needs its upstream gradient");
}

// The bindings take the fields as one tuple in struct order, read with the C API: a dict's lookups by name
// and pybind11's casts cost more than the kernels at the 2-d mixture's sizes.
template <typename T>
T field(const py::tuple& t, size_t i) {
  PyObject* o = PyTuple_GET_ITEM(t.ptr(), i);
  T v;
  if constexpr (std::is_same_v<T, bool>) {
    if (!PyBool_Check(o)) throw py::type_error("field " + std::to_string(i) + " must be a bool");
    v = o == Py_True;
  } else if constexpr (std::is_same_v<T, double>) {
    v = PyFloat_AsDouble(o);
  } else if constexpr (std::is_unsigned_v<T>) {
    v = T(PyLong_AsUnsignedLongLong(o));
  } else {
    v = T(PyLong_AsLongLong(o));
  }
  if (PyErr_Occurred()) throw py::error_already_set();
  return v;
}

void check_arity(const py::tuple& t, size_t n, const char* what) {
  if (t.size() != n)
    throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(n) + " fields, got " +
                                std::to_string(t.size()));
}

NoisyForwardArgs forward_args(const py::tuple& t) {
  check_arity(t, 21, "noisy_forward");
  NoisyForwardArgs a;
  a.x_real = field<std::uintptr_t>(t, 0);
  a.x_fake = field<std::uintptr_t>(t, 1);
  a.sr_b = field<int64_t>(t, 2);
  a.sr_f = field<int64_t>(t, 3);
  a.sf_b = field<int64_t>(t, 4);
  a.sf_f = field<int64_t>(t, 5);
  a.eps = field<std::uintptr_t>(t, 6);
  a.se_b = field<int64_t>(t, 7);
  a.se_f = field<int64_t>(t, 8);
  a.sigma = field<std::uintptr_t>(t, 9);
  a.sigma_value = field<double>(t, 10);
  a.C = field<int64_t>(t, 11);
  a.rng = field<std::uintptr_t>(t, 12);
  a.advance = field<bool>(t, 13);
  a.used = field<std::uintptr_t>(t, 14);
  a.out_real = field<std::uintptr_t>(t, 15);
  a.out_fake = field<std::uintptr_t>(t, 16);
  a.dtype = field<int>(t, 17);
  a.m = field<int64_t>(t, 18);
  a.F = field<int64_t>(t, 19);
  a.half = field<bool>(t, 20);
  check_forward(a);
  return a;
}

NoisyBackwardArgs backward_args(const py::tuple& t) {
  check_arity(t, 16, "noisy_backward");
  NoisyBackwardArgs a;
  a.g_real = field<std::uintptr_t>(t, 0);
  a.g_fake = field<std::uintptr_t>(t, 1);
  a.gr_b = field<int64_t>(t, 2);
  a.gr_f = field<int64_t>(t, 3);
  a.gf_b = field<int64_t>(t, 4);
  a.gf_f = field<int64_t>(t, 5);
  a.dx_real = field<std::uintptr_t>(t, 6);
  a.dx_fake = field<std::uintptr_t>(t, 7);
  a.deps = field<std::uintptr_t>(t, 8);
  a.dsigma = field<std::uintptr_t>(t, 9);
  a.rng = field<std::uintptr_t>(t, 10);
  a.C = field<int64_t>(t, 11);
  a.dtype = field<int>(t, 12);
  a.m = field<int64_t>(t, 13);
  a.F = field<int64_t>(t, 14);
  a.half = field<bool>(t, 15);
  check_backward(a);
  return a;
}

// For the tests: the implementation `path` names, so they cover each one the CPU can run: "best" (what the kernels
// use), "portable", "avx2" or "avx512f" (ValueError where the CPU or the build lacks it).
#ifdef FG_X86_DISPATCH
#define FG_SIMD_PATHS(name) name##_avx2, name##_avx512
#else
#define FG_SIMD_PATHS(name) nullptr, nullptr
#endif

template <typename Fn>
Fn pick_path(const std::string& path, Fn best, Fn portable, Fn avx2, Fn avx512, const char* what) {
  Fn fn = nullptr;
  if (path == "best") fn = best;
  if (path == "portable") fn = portable;
#ifdef FG_X86_DISPATCH
  if (path == "avx2" && kHasAvx2) fn = avx2;
  if (path == "avx512f" && kHasAvx512) fn = avx512;
#endif
  if (fn == nullptr) throw std::invalid_argument(std::string(what) + ": path " + path + " is unknown or unsupported here");
  return fn;
}

// Raw stream access for the tests: n counters' words (int64 buffer (n, 4)) by `path`'s Philox.
void philox_words_cpu(uint64_t seed, uint64_t offset, int64_t n, std::uintptr_t out, const std::string& path) {
  using WordsFn = void (*)(uint64_t, uint64_t, uint32_t*);
  const WordsFn fn = pick_path<WordsFn>(path, words_batch, words_portable, FG_SIMD_PATHS(words), "philox_words_cpu");
  int64_t* o = mptr<int64_t>(out);
  uint32_t w[kBatchN];
  for (int64_t g0 = 0; g0 < n; g0 += kBatch) {
    fn(seed, offset + uint64_t(g0), w);
    for (int64_t j = 0; j < kBatch && g0 + j < n; ++j)
      for (int k = 0; k < 4; ++k) o[(g0 + j) * 4 + k] = int64_t(w[k * kBatch + j]);
  }
}

// The draw's interleave step by `path`: out (4 * kBatch floats) from rad, cs, sn (2 * kBatch each).
void philox_interleave_cpu(std::uintptr_t rad, std::uintptr_t cs, std::uintptr_t sn, std::uintptr_t out,
                           const std::string& path) {
  using Fn = void (*)(const float*, const float*, const float*, float*);
  const Fn fn = pick_path<Fn>(path, interleave, interleave_portable, FG_SIMD_PATHS(interleave), "philox_interleave_cpu");
  fn(cptr<float>(rad), cptr<float>(cs), cptr<float>(sn), mptr<float>(out));
}

// The scalar functions of philox.h that the CUDA kernels call, run here so the CPU tests check the GPU's math.
void philox_header_cpu(uint64_t seed, uint64_t offset, int64_t counters, std::uintptr_t words, std::uintptr_t normals) {
  int64_t* w = mptr<int64_t>(words);
  float* z = mptr<float>(normals);
  for (int64_t c = 0; c < counters; ++c) {
    const philox::Words b = philox::block(seed, offset + uint64_t(c));
    const philox::Normals nz = philox::normals4(seed, offset + uint64_t(c));
    for (int k = 0; k < 4; ++k) {
      w[c * 4 + k] = int64_t(b.v[k]);
      z[c * 4 + k] = nz.v[k];
    }
  }
}

void philox_normal_cpu(uint64_t seed, uint64_t offset, int64_t n, std::uintptr_t out) {
  if (n > 0) draw_range(seed, offset, 0, n, mptr<float>(out));
}

void bind(py::module_& m) {
  m.def("noisy_forward_cpu", [](const py::tuple& t, std::uintptr_t z_out) {
    const NoisyForwardArgs a = forward_args(t);
    if (z_out != 0 && a.eps != 0) throw std::invalid_argument("noisy_forward_cpu: z_out needs a Gaussian draw");
    py::gil_scoped_release nogil;
    dispatch<Forward>(a.dtype, a, "noisy_forward_cpu", mptr<float>(z_out));
  }, "args"_a, "z_out"_a = 0);
  m.def("noisy_backward_cpu", [](const py::tuple& t, std::uintptr_t z_in, bool total) {
    const NoisyBackwardArgs a = backward_args(t);
    py::gil_scoped_release nogil;
    dispatch<Backward>(a.dtype, a, "noisy_backward_cpu", cptr<float>(z_in), total);
  }, "args"_a, "z_in"_a = 0, "total"_a = false);
  m.def("philox_words_cpu", &philox_words_cpu, "seed"_a, "offset"_a, "n"_a, "out"_a, "path"_a = "best");
  // for `fastgan info`: the SIMD path the CPU draw takes on this machine
  m.def("noise_draw_simd", []() -> std::string {
#ifdef FG_X86_DISPATCH
    if (kHasAvx512) return "avx512f";
    if (kHasAvx2) return "avx2";
#endif
    return "portable";
  });
  m.def("philox_interleave_cpu", &philox_interleave_cpu, "rad"_a, "cs"_a, "sn"_a, "out"_a, "path"_a = "best");
  m.def("philox_header_cpu", &philox_header_cpu, "seed"_a, "offset"_a, "counters"_a, "words"_a, "normals"_a);
  m.def("philox_normal_cpu", &philox_normal_cpu, "seed"_a, "offset"_a, "n"_a, "out"_a);
#ifdef FASTGAN_WITH_CUDA
  m.def("noisy_forward_cuda", [](const py::tuple& t, std::uintptr_t stream) {
    const NoisyForwardArgs a = forward_args(t);
    if (a.eps == 0 && a.advance && a.used == 0)
      throw std::invalid_argument("noisy_forward_cuda: advance needs a `used` buffer");
    raise_cuda(cuda::noisy_forward(a, stream), "noisy_forward_cuda");
  });
  m.def("noisy_backward_cuda", [](const py::tuple& t, std::uintptr_t stream) {
    const NoisyBackwardArgs a = backward_args(t);
    raise_cuda(cuda::noisy_backward(a, stream), "noisy_backward_cuda");
  });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(noise, fastgan::bind);
