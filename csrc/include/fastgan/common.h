// Definitions shared by the CPU (host compiler) and CUDA (nvcc) translation units.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FG_HD __host__ __device__ __forceinline__
#else
#define FG_HD inline
#endif

namespace fastgan {

// Dtype codes passed from Python (fastgan/_ext.py keeps the same table).
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

FG_HD float fg_exp(float x) { return expf(x); }
FG_HD double fg_exp(double x) { return exp(x); }

// 1 / x for x in [1, 2] (1 + exp(-|psi|)), rounded as IEEE division rounds it. On a GPU in float: the sequence nvcc
// emits for 1.0f / x, a reciprocal estimate and one Newton step with fmas, without the range test and branch to its
// slow path, which only tiny, huge and special x take (NaN still gives NaN); 7 fewer instructions a logit.
FG_HD float fg_recip_1_2(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return fmaf(r, -fmaf(x, r, -1.0f), r);
#else
  return 1.0f / x;
#endif
}
FG_HD double fg_recip_1_2(double x) { return 1.0 / x; }

}  // namespace fastgan
