// Helpers of the CPU kernels' batched loops. Function multi-versioning: GCC builds an AVX2 clone and a
// baseline one and picks at load time, so one wheel runs everywhere and uses 256-bit vectors where the CPU
// has them.
#pragma once
#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FG_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FG_CPU_CLONES
#endif

namespace fastgan {

// out[i] = p[(n0 + i) * stride] as double, i < cnt: a strided slice of logits into a batch buffer.
template <typename A>
inline void load_as_double(const A* p, int64_t n0, int64_t cnt, int64_t stride, double* out) {
  for (int64_t i = 0; i < cnt; ++i) out[i] = double(p[(n0 + i) * stride]);
}

}  // namespace fastgan
