// Counter-based normal noise shared by the CPU (csrc/cpu/noise.cpp) and CUDA (csrc/cuda/noise.cu) kernels,
// so both draw the same epsilon for the same (seed, offset).
//
// The stream is the one Triton's tl.randn4x produces (kernels/noise.py uses it), and
// fastgan/reference/noise.py re-implements it in torch ops as the oracle:
//   normal number e of a draw at offset `off` comes from the Philox4x32-10 block
//   key = (lo32(seed), hi32(seed)), counter = (lo32(off + e/4), hi32(off + e/4), 0, 0),
//   its four words -> uniforms u0..u3 (31 bits, Triton's uint_to_uniform_float) -> Box-Muller on
//   (u0, u1) and (u2, u3) -> four normals; e picks word e % 4. A draw of N numbers uses ceil(N/4) counters.
#pragma once
#include <cmath>
#include <cstdint>
#include "fastgan/common.h"

namespace fastgan {
namespace philox {

struct Words { uint32_t v[4]; };
struct Normals { float v[4]; };

constexpr uint32_t kMulA = 0xD2511F53u;   // multiplier applied to word 0
constexpr uint32_t kMulB = 0xCD9E8D57u;   // multiplier applied to word 2
constexpr uint32_t kBumpA = 0x9E3779B9u;  // key schedule (golden ratio)
constexpr uint32_t kBumpB = 0xBB67AE85u;  // key schedule (sqrt(3) - 1)
constexpr int kRounds = 10;
constexpr int kPerCounter = 4;

FG_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * uint64_t(b)) >> 32);
#endif
}

// Philox4x32 with kRounds rounds (Salmon et al., SC'11), the Random123 / curand / Triton variant.
FG_HD Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kRounds; ++r) {
    const uint32_t hi_a = mulhi32(kMulA, c0), lo_a = kMulA * c0;
    const uint32_t hi_b = mulhi32(kMulB, c2), lo_b = kMulB * c2;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += kBumpA;
    k1 += kBumpB;
  }
  Words w;
  w.v[0] = c0; w.v[1] = c1; w.v[2] = c2; w.v[3] = c3;
  return w;
}

FG_HD Words block(uint64_t seed, uint64_t counter) {
  return philox4x32(uint32_t(counter), uint32_t(counter >> 32), 0u, 0u, uint32_t(seed), uint32_t(seed >> 32));
}

// [0, 1) from 31 bits: the sign is folded (~x for negative x as int32), as Triton does, then scaled in float32.
FG_HD float to_uniform(uint32_t x) {
  int32_t i = int32_t(x);
  if (i < 0) i = ~i;
  return float(i) * 4.6566127342e-10f;
}

FG_HD void box_muller(float u1, float u2, float* n1, float* n2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;  // log(0) guard, same bound as Triton
  const float th = 6.283185307179586f * u2;
  const float r = sqrtf(-2.0f * logf(u1));
  *n1 = r * cosf(th);
  *n2 = r * sinf(th);
}

// The four standard normals of counter `offset + group`.
FG_HD Normals normals4(uint64_t seed, uint64_t counter) {
  const Words w = block(seed, counter);
  Normals n;
  box_muller(to_uniform(w.v[0]), to_uniform(w.v[1]), &n.v[0], &n.v[1]);
  box_muller(to_uniform(w.v[2]), to_uniform(w.v[3]), &n.v[2], &n.v[3]);
  return n;
}

// Counters a draw of n numbers consumes: the offset advance after it.
FG_HD int64_t counters_for(int64_t n) { return (n + kPerCounter - 1) / kPerCounter; }

}  // namespace philox
}  // namespace fastgan
